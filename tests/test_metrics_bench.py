import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from locedit.bench import decode_pie_mask, load_rows, open_dataset, strip_brackets
from locedit.bench.report import markdown_table, summarise, write_report
from locedit.bench.runner import _repair, append_row
from locedit.metrics import l1, l2, mse, pie_masked, psnr, ssim


# ---- pixel metrics by hand -----------------------------------------------------------------------------
def test_pixel_metrics_by_hand():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.zeros(1, 3, 4, 4)
    b[..., 0, 0] = 1.0  # one pixel, all channels, differs by 1
    assert math.isclose(mse(a, b).item(), 1 / 16)
    assert math.isclose(l1(a, b).item(), 1 / 16)
    assert math.isclose(l2(a, b).item(), 1 / 16)
    assert math.isclose(psnr(a, b).item(), 10 * math.log10(16), rel_tol=1e-6)
    mask = torch.zeros(4, 4)
    mask[0, :2] = 1  # the differing pixel and one equal pixel
    assert math.isclose(mse(a, b, mask).item(), 0.5)
    assert math.isclose(psnr(a, b, mask).item(), 10 * math.log10(2), rel_tol=1e-6)
    assert psnr(a, a).item() == math.inf


def test_ssim_by_hand():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert math.isclose(ssim(x, x).item(), 1.0, rel_tol=1e-6)
    # two constant images: SSIM = (2 mu_a mu_b + c1) / (mu_a^2 + mu_b^2 + c1) (variances are zero)
    a, b = torch.full((1, 1, 11, 11), 0.2), torch.full((1, 1, 11, 11), 0.6)
    c1 = 0.01 ** 2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)
    assert math.isclose(ssim(a, b).item(), expected, rel_tol=1e-4)  # float32 variance round-off


def test_pie_bench_masking_convention():
    img = torch.ones(1, 3, 4, 4)
    m = torch.zeros(4, 4)
    m[1:3, 1:3] = 1
    out = pie_masked(img, m)
    assert out[0, :, 1:3, 1:3].abs().sum() == 0 and out[0, :, 0, :].min() == 1


def test_pie_rle_decoding_sets_the_border():
    m = decode_pie_mask([5, 3, 20, 2], size=6)
    flat = m.flatten()
    assert flat[5:8].all() and flat[20:22].all()
    assert m[0].all() and m[-1].all() and m[:, 0].all() and m[:, -1].all()
    inner = m[1:-1, 1:-1]
    assert inner.sum() == 3  # 7 (row 1 col 1..) and 20, 21 are inside; 5, 6 are on the border
    assert strip_brackets("a [red] cat on [the] mat") == "a red cat on the mat"


# ---- datasets ---------------------------------------------------------------------------------------------
def _pie_folder(tmp_path):
    root = tmp_path / "pie"
    (root / "annotation_images" / "0_random").mkdir(parents=True)
    for k in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8)).save(root / "annotation_images" / "0_random" / f"{k}.jpg")
    mapping = {
        f"00{k}": {"image_path": f"0_random/{k}.jpg", "original_prompt": "a cat on the grass",
                   "editing_prompt": "a [dog] on the grass", "editing_instruction": "make the cat a dog",
                   "editing_type_id": str(k), "blended_word": "cat dog", "mask": [40, 10, 100, 5]}
        for k in range(2)
    }
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


def test_pie_bench_loader(tmp_path):
    items = list(open_dataset(f"pie:{_pie_folder(tmp_path)}"))
    assert [i.id for i in items] == ["000", "001"]
    it = items[0]
    assert it.target_prompt == "a dog on the grass" and it.blend_words == ("cat", "dog")
    assert it.mask.shape == (1, 1, 32, 32) and it.mask[0, 0, 0].all() and it.mask.flatten()[42] == 1
    assert it.edit_type == "0" and it.regions[0][0] == "dog" and it.source_regions[0][0] == "cat"


def test_jsonl_and_shapes_loaders(tmp_path):
    from locedit.world.export import write_edits

    write_edits(tmp_path / "w", 4, seed=3, size=32)
    items = list(open_dataset(f"jsonl:{tmp_path / 'w' / 'edits.jsonl'}"))
    shapes = list(open_dataset("shapes:n=4,seed=3,size=32"))
    assert len(items) == len(shapes) == 4
    for a, b in zip(items, shapes):
        assert a.source_prompt == b.source_prompt and a.edit_type == b.edit_type
        assert torch.equal(a.image, b.image) and torch.equal(a.target_image, b.target_image)
    again = list(open_dataset("shapes:n=4,seed=3,size=32"))
    assert all(torch.equal(x.image, y.image) for x, y in zip(shapes, again))
    with pytest.raises(Exception, match="KIND"):
        list(open_dataset("nonsense"))


# ---- runner: resume, no duplicates, torn lines ------------------------------------------------------------
def test_torn_last_line_is_cut_and_rows_dedupe(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, {"id": "a", "method": "p2p", "psnr": 1.0})
    append_row(path, {"id": "a", "method": "p2p", "psnr": 2.0})
    with open(path, "a") as f:
        f.write('{"id": "b", "meth')
    _repair(path)
    assert path.read_text().endswith("\n")
    rows = load_rows(tmp_path)
    assert len(rows) == 1 and rows[0]["psnr"] == 2.0  # one row per key: the last written (a retry supersedes)


def test_killed_bench_resumes_without_losing_or_duplicating(model_dir, tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "locedit", "bench", "--dataset", "shapes:n=6,seed=1", "--methods", "p2p,p2p-mask",
           "--model", str(model_dir), "--steps", "2", "--inversion", "ddim", "--out", str(out), "--quiet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "results.jsonl").exists() and len((out / "results.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = len(load_rows(out))
    assert 3 <= first < 12
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = load_rows(out)
    keys = [(r["id"], r["method"]) for r in rows]
    assert len(keys) == 12 and len(set(keys)) == 12
    raw = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(raw) == 12  # nothing written twice on disk either


def test_report_table_plots_and_gallery(tmp_path):
    rows = [
        {"id": "1", "method": "p2p", "edit_type": "colour", "psnr": 20.0, "output": "images/p2p/1.png"},
        {"id": "2", "method": "p2p", "edit_type": "shape", "psnr": float("nan"), "output": "images/p2p/2.png"},
        {"id": "1", "method": "lime", "edit_type": "colour", "error": "needs a model"},
    ]
    for r in rows:
        append_row(tmp_path / "results.jsonl", r)
    summary = summarise(load_rows(tmp_path))
    mean, count, nans = summary[("p2p", "all")]["psnr"]
    assert mean == 20.0 and count == 1 and nans == 1
    table = markdown_table(summary)
    assert "(1 NaN)" in table and "| lime | all |" in table
    written = write_report(tmp_path)
    assert written["markdown"].exists() and written["gallery"].exists() and "plot_psnr" in written
    assert "images/p2p/1.png" in written["gallery"].read_text()


def test_ranks_share_the_items_and_results_merge(model_dir, tmp_path, monkeypatch):
    from locedit.bench import BenchConfig, run_bench
    from locedit.diffusion import load_model

    bundle = load_model(str(model_dir))
    cfg = BenchConfig(steps=2, inversion="ddim")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        run_bench(open_dataset("shapes:n=3,seed=2"), ["p2p"], tmp_path, bundle, None, cfg)
    assert (tmp_path / "results.rank0.jsonl").exists() and (tmp_path / "results.rank1.jsonl").exists()
    rows = load_rows(tmp_path)
    assert sorted(r["id"] for r in rows) == [f"shapes-2-{k:05d}" for k in range(3)]
    assert {r["rank"] for r in rows} == {0, 1}


def test_learned_metrics_in_rows_with_stand_ins(model_dir, tmp_path):
    import torch.nn as nn

    from locedit.bench import BenchConfig, run_bench
    from locedit.bench.runner import LearnedMetrics
    from locedit.diffusion import load_model
    from locedit.metrics.learned import LPIPS

    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    lp = LPIPS("alex", features=tiny, taps=(1,), channels=(4,))
    nn.init.constant_(lp.lin0.model[1].weight, 1.0)
    cfg = BenchConfig(steps=2, inversion="ddim", learned=LearnedMetrics(lpips={"alex": lp}))
    run_bench(open_dataset("shapes:n=1,seed=4"), ["p2p"], tmp_path, load_model(str(model_dir)), None, cfg)
    row = load_rows(tmp_path)[0]
    assert row["lpips_alex"] > 0
    # every metric scores the saved 8-bit file, as PIE-Bench's evaluation reads its outputs
    item = next(iter(open_dataset("shapes:n=1,seed=4")))
    saved = torch.from_numpy(np.array(Image.open(tmp_path / row["output"]).convert("RGB"))).permute(2, 0, 1)[None]
    saved = saved.float() / 255
    a, b = pie_masked(item.image.float(), item.mask), pie_masked(saved, item.mask)
    assert row["bg_psnr"] == float(psnr(a, b)[0]) and row["lpips_alex"] == float(lp(a, b)[0])


def test_unknown_learned_metric_is_refused():
    from locedit.bench.runner import LearnedMetrics
    from locedit.errors import LoceditError

    with pytest.raises(LoceditError, match="fid"):
        LearnedMetrics.load(["fid"])


def test_bench_instruct_methods_record_roi_iou(instruct_dir, tmp_path):
    from locedit.bench import BenchConfig, run_bench
    from locedit.diffusion import load_model

    ip2p = load_model(str(instruct_dir))
    run_bench(open_dataset("shapes:n=1,seed=5,kinds=colour"), ["ip2p", "lime"], tmp_path, None, ip2p,
              BenchConfig(steps=2))
    rows = {r["method"]: r for r in load_rows(tmp_path)}
    assert 0.0 <= rows["lime"]["roi_iou"] <= 1.0 and "roi_iou" not in rows["ip2p"]
    assert "oracle_success" in rows["ip2p"]


def test_report_tables_stay_narrow_and_show_every_metric(tmp_path):
    """Issue 31: report.md's one 16-column table is split into tables of at most six metric columns."""
    from locedit.bench.report import METRICS, TABLE_WIDTH

    metrics = list(METRICS)[:16]
    append_row(tmp_path / "results.jsonl", {"id": "1", "method": "p2p", "edit_type": "colour",
                                            **{m: 1.0 for m in metrics}})
    text = write_report(tmp_path)["markdown"].read_text()
    headers = [line for line in text.splitlines() if line.startswith("| method |")]
    assert len(headers) == 2 * -(-len(metrics) // TABLE_WIDTH)  # per method, and per method and edit type
    assert all(line.count("|") - 1 <= 3 + TABLE_WIDTH + 1 for line in headers)
    for m in metrics:
        assert sum(f"(`{m}`)" in line for line in headers) == 2


def test_the_bench_reports_each_edits_steps_with_its_item_and_method(bundle, tmp_path):
    """Issue 31: the bench shows progress from the first edit's first steps, naming the item and the
    method, not only when an item ends."""
    from locedit.bench.datasets import load_shapes
    from locedit.bench.runner import BenchConfig, run_bench

    seen = []

    def progress(iterable, desc):
        seen.append(desc)
        return iterable

    items = list(load_shapes("n=1"))
    run_bench(items, ["p2p"], tmp_path / "run", t2i=bundle, config=BenchConfig(steps=2, inversion="ddim"),
              progress=progress)
    tag = f"[1/1] {items[0].id} p2p: "
    assert seen[0].startswith("bench rank")
    assert f"{tag}ddim inversion" in seen and f"{tag}editing" in seen


def test_bench_inversion_default_runs_each_method_on_its_own(model_dir, tmp_path):
    """``--inversion default``: each method on its paper's inversion (PnP on DDIM: on null-text its scripts'
    negative prompt is refused, as the single-inversion run shows)."""
    from locedit.bench import BenchConfig, run_bench
    from locedit.diffusion import load_model

    bundle = load_model(str(model_dir))
    for inversion, ok in (("default", True), ("null-text", False)):
        out = tmp_path / inversion
        run_bench(open_dataset("shapes:n=1,seed=4"), ["pnp"], out, bundle, None,
                  BenchConfig(steps=2, inversion=inversion))
        row = load_rows(out)[0]
        assert ("error" not in row) == ok, row
