"""Bad or unusual input through the CLI: one `error:` line, exit 2, no traceback, nothing written
(docs/errors.md lists what is refused and what it says)."""

import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from locedit.cli import main

FAST = ["--steps", "2", "--quiet", "--model", "tiny-random"]
EDIT = ["--source", "a red square", "--target", "a blue square"]


def run(argv, capsys):
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def refused(argv, capsys, needle, *must_not_exist):
    code, _, err = run(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err
    for p in must_not_exist:
        assert not os.path.exists(p), p
    return lines[0]


# ---- images -------------------------------------------------------------------------------------------------
def test_image_over_the_pixel_or_byte_limit_is_refused_before_decoding(scene_png, tmp_path, capsys):
    img, _ = scene_png
    out = tmp_path / "o.png"
    refused(["edit", img, *EDIT, "--max-image-pixels", "1000", "--out", str(out), *FAST], capsys,
            "over the limit of 0.001 megapixels", out)
    refused(["edit", img, *EDIT, "--max-image-mb", "0.0001", "--out", str(out), *FAST], capsys, "MiB", out)


def test_a_pil_decompression_bomb_is_our_error_not_a_traceback(tmp_path, capsys):
    # a PNG whose header claims 20000 x 20000 pixels: refused from the header, nothing decoded
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(png)
    out = tmp_path / "o.png"
    refused(["edit", str(path), *EDIT, "--out", str(out), *FAST], capsys, "20000x20000", out)


def test_16_bit_grayscale_images_and_masks_keep_their_range(tmp_path):
    from locedit.fileio import load_image, load_mask

    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    x = load_image(path)
    assert x.shape == (1, 3, 64, 64)
    torch.testing.assert_close(x[0, 0], torch.from_numpy(ramp.astype(np.float32) / 65535), rtol=0, atol=1e-6)
    m = load_mask(path)
    assert 0.45 < m.mean().item() < 0.55  # half the ramp is above half of the 16-bit range


# ---- numbers ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,needle", [
    (["--steps", "1000"], "between 1 and 999"),
    (["--steps", "5000"], "between 1 and 999"),
    (["--steps", "0"], "must be >= 1"),
    (["--guidance", "nan"], "not a finite number"),
    (["--seed", "-1"], "not in [0, 2**32)"),
    (["--cross-replace", "inf"], "not a finite number"),
])
def test_numbers_out_of_range(scene_png, tmp_path, capsys, flags, needle):
    img, _ = scene_png
    out = tmp_path / "o.png"
    args = ["edit", img, *EDIT, "--out", str(out), "--quiet", "--model", "tiny-random"] + flags
    refused(args + (["--steps", "2"] if "--steps" not in flags else []), capsys, needle, out)


def test_instruct_seed_and_empty_instruction(scene_png, tmp_path, capsys):
    img, _ = scene_png
    out = tmp_path / "o.png"
    refused(["instruct", img, "--instruction", "make it blue", "--seed", "-1", "--out", str(out)], capsys,
            "not in [0, 2**32)", out)
    refused(["instruct", img, "--instruction", "  ", "--method", "ip2p", "--out", str(out)], capsys,
            "--instruction is empty", out)


# ---- prompts ------------------------------------------------------------------------------------------------
def test_empty_prompts(scene_png, tmp_path, capsys):
    img, _ = scene_png
    out = tmp_path / "o.png"
    refused(["edit", img, "--source", "a red square", "--target", "", "--out", str(out), *FAST], capsys,
            "--target is empty", out)
    refused(["invert", img, "--prompt", " ", "--out", str(tmp_path / "inv"), *FAST], capsys, "--source is empty")


# ---- outputs -------------------------------------------------------------------------------------------------
def test_output_paths_are_checked_before_the_run(scene_png, tmp_path, capsys):
    img, _ = scene_png
    blocker = tmp_path / "file.png"
    blocker.write_bytes(b"x")
    refused(["edit", img, *EDIT, "--out", str(blocker / "o.png"), *FAST], capsys, "not writable")
    refused(["edit", img, *EDIT, "--out", str(tmp_path), *FAST], capsys, "is a folder")
    refused(["edit", img, *EDIT, "--out", str(tmp_path / "o.bmp"), *FAST], capsys, "unsupported file type")
    # all or nothing: a panel that cannot be written stops the command before the edit, so no --out either
    out = tmp_path / "o.png"
    refused(["edit", img, *EDIT, "--out", str(out), "--panel", str(blocker / "p.png"), *FAST], capsys,
            "--panel", out)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".locedit")]


def test_jpeg_output_is_jpeg_with_metadata_and_files_honour_the_umask(scene_png, tmp_path, capsys):
    img, _ = scene_png
    out = tmp_path / "o.jpg"
    old = os.umask(0o027)
    try:
        code, _, err = run(["edit", img, *EDIT, "--out", str(out), *FAST], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.size == (80, 48)
        meta = json.loads(im.getexif()[0x010E])["locedit"]
    assert meta["target"] == "a blue square"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640


def test_invert_into_a_new_folder_leaves_no_temporary_folder(scene_png, tmp_path, capsys):
    img, _ = scene_png
    dest = tmp_path / "deep" / "inv"
    code, _, err = run(["invert", img, "--prompt", "a red square", "--inversion", "ddim", "--out", str(dest), *FAST],
                       capsys)
    assert code == 0, err
    assert sorted(os.listdir(dest)) == ["manifest.json", "trajectory.safetensors"]
    assert os.listdir(tmp_path / "deep") == ["inv"]


# ---- saved inversions ---------------------------------------------------------------------------------------
@pytest.fixture
def saved(scene_png, tmp_path, capsys):
    img, _ = scene_png
    dest = tmp_path / "inv"
    code, _, err = run(["invert", img, "--prompt", "a red square", "--inversion", "ddim", "--out", str(dest), *FAST],
                       capsys)
    assert code == 0, err
    return dest


def test_truncated_trajectory(saved, tmp_path, capsys):
    f = saved / "trajectory.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    out = tmp_path / "o.png"
    refused(["edit", "--from-inversion", str(saved), "--target", "a blue square", "--out", str(out), *FAST], capsys,
            "not a readable saved trajectory", out)


def test_trajectory_of_the_wrong_shape(saved, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    f = saved / "trajectory.safetensors"
    tensors = load_file(str(f))
    tensors["latents"] = tensors["latents"][:, :, :8, :8].contiguous()
    save_file(tensors, str(f))
    out = tmp_path / "o.png"
    refused(["edit", "--from-inversion", str(saved), "--target", "a blue square", "--out", str(out), *FAST], capsys,
            "latents are (1, 4, 8, 8)", out)


# ---- unexpected errors ----------------------------------------------------------------------------------------
def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(scene_png, tmp_path, capsys, monkeypatch):
    import locedit.cli.edit as edit_cli

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(edit_cli, "cmd_edit", broken)
    img, _ = scene_png
    code, _, err = run(["edit", img, *EDIT, "--out", str(tmp_path / "o.png"), *FAST], capsys)
    assert code == 1 and err.strip().count("\n") == 0 and "internal error: RuntimeError: boom" in err
    with pytest.raises(RuntimeError, match="boom"):
        main(["edit", img, *EDIT, "--out", str(tmp_path / "o.png"), "--debug", *FAST])


# ---- bench and report ----------------------------------------------------------------------------------------
BENCH = ["bench", "--model", "tiny-random", "--steps", "2", "--quiet", "--inversion", "ddim"]


@pytest.mark.parametrize("spec,needle", [
    ("shapes:n=abc", "n='abc' is not an integer"),
    ("shapes:n=2,kinds=colour+zebra", "unknown ShapesEdit kind 'zebra'"),
    ("shapes:n=0", "must be >= 1"),
])
def test_malformed_dataset_specs(tmp_path, capsys, spec, needle):
    refused(BENCH + ["--dataset", spec, "--methods", "p2p", "--out", str(tmp_path / "b")], capsys, needle)


def test_jsonl_rows_are_checked_with_their_line_number(scene_png, tmp_path, capsys):
    img, _ = scene_png
    spec = tmp_path / "edits.jsonl"
    good = json.dumps({"image": os.path.basename(img), "source_prompt": "a red square", "target_prompt": "a blue square"})
    spec.write_text(good + "\n[1, 2]\n")
    refused(BENCH + ["--dataset", f"jsonl:{spec}", "--methods", "p2p", "--out", str(tmp_path / "b")], capsys,
            "edits.jsonl:2: not a JSON object")
    spec.write_text(good + "\n" + json.dumps({"image": "nowhere.png", "target_prompt": "a blue square"}) + "\n")
    refused(BENCH + ["--dataset", f"jsonl:{spec}", "--methods", "p2p", "--out", str(tmp_path / "b")], capsys,
            "edits.jsonl:2: names a missing file 'nowhere.png'")


def test_failed_rows_are_retried_and_other_settings_refused(tmp_path, capsys, monkeypatch):
    import locedit.bench.runner as runner
    from locedit.errors import LoceditError

    out = tmp_path / "b"
    args = BENCH + ["--dataset", "shapes:n=2,kinds=colour", "--methods", "p2p", "--out", str(out)]
    real = runner.run_method
    monkeypatch.setattr(runner, "run_method", lambda *a, **k: (_ for _ in ()).throw(LoceditError("flaky")))
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert [r.get("error") for r in runner.load_rows(out)] == ["flaky", "flaky"]
    monkeypatch.setattr(runner, "run_method", real)
    code, _, err = run(args + ["--no-retry"], capsys)  # kept as they are
    assert code == 0 and all("error" in r for r in runner.load_rows(out))
    code, _, err = run(args, capsys)  # retried
    assert code == 0, err
    rows = runner.load_rows(out)
    assert len(rows) == 2 and not any("error" in r for r in rows)
    refused(["bench", "--model", "tiny-random", "--steps", "3", "--quiet", "--inversion", "ddim", "--dataset",
             "shapes:n=2,kinds=colour", "--methods", "p2p", "--out", str(out)], capsys, "steps=2, not 3")


def test_report_skips_rows_without_an_id(tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "results.jsonl").write_text(json.dumps({"id": "a", "method": "p2p", "bg_psnr": 20.0,
                                                   "background_psnr": 30.0}) + "\n"
                                       + json.dumps({"method": "p2p", "bg_psnr": 1.0}) + "\n[]\n")
    (out / "run.json").write_text(json.dumps({"model": "shapes", "steps": 50}))
    code, _, err = run(["report", str(out), "--quiet"], capsys)
    assert code == 0, err
    text = (out / "report.md").read_text()
    assert "2 line(s) without an id and a method were skipped: results.jsonl:2, results.jsonl:3" in text
    assert "Settings: model `shapes`, steps `50`" in text
    # one name per metric, with what it measures and its unit; an earlier run's name is mapped to it
    assert "PSNR outside the edited objects, against the source [dB] (`outside_psnr`)" in text
    assert "background_psnr" not in text
