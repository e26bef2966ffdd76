"""PIE-Bench's metrics: locedit's against PnPInversion's own evaluation code (issue 35, item 1).

    python bench/peers/pnp_metrics.py --checkout ~/src/PnPInversion [--n 6] [--json out.json]

PnPInversion's ``evaluation/evaluate.py`` (``mask_decode``, ``calculate_metric``) and
``evaluation/matrics_calculator.py`` (``MetricsCalculator``) run in their own environment (torch
2.13.0, ``torchmetrics==1.2.0`` - unpinned upstream: the release of the code's time -,
``lightning-utilities==0.11.9``, ``transformers==4.34.0`` for CLIPScore's import, numpy, Pillow; the
torchvision stand-in of ``bench/peers/shims``, since the module imports ``torchvision.transforms``
for its DINO part only) on the same images and
run-length masks as locedit's ``decode_pie_mask`` and ``locedit.metrics`` (the bench's ``psnr``,
``mse``, ``ssim`` without a mask, ``bg_*`` with it): every pixel metric of PIE-Bench's table, whole
image, unedited part and edited part, plus the decoded masks. The calculator is built without its
``__init__``, which loads CLIP, LPIPS's network and DINO from the internet: its PSNR, MSE and SSIM
calculators are constructed as that ``__init__`` constructs them; CLIP similarity, LPIPS and the
structure distance need those weights and are not compared here. Nothing of the checkout is copied
into locedit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_WORK, DRIVERS, SHIMS, Peer, PeerError, build_env, checkout_commit, run_process  # noqa: E402

PEER = Peer(name="pnp-metrics", repository="https://github.com/cure-lab/PnPInversion (evaluation/)",
            requirements=("torchmetrics==1.2.0", "numpy", "Pillow"),
            adjustments=(("lightning-utilities==0.11.9", "torchmetrics 1.2.0 takes >= 0.8; 0.9.0 (its time) imports "
                                                         "pkg_resources, which the setuptools torch 2.13 needs no longer ships"),
                         ("transformers==4.34.0", "torchmetrics defines CLIPScore, which the module imports, only with "
                                                  "transformers installed (the release of the code's time; the class "
                                                  "is imported, never built)")),
            patches=lambda size, device, steps: [], methods=("pixel",), shims=("torchvision",))
METRICS = ("psnr", "mse", "ssim", "psnr_unedit_part", "mse_unedit_part", "ssim_unedit_part", "psnr_edit_part",
           "mse_edit_part", "ssim_edit_part")
SIZE = 512  # mask_decode's default shape


def rle(mask) -> list[int]:
    """PIE-Bench's run-length code of a (SIZE, SIZE) 0/1 mask: [start, length, ...] over the row-major
    flattening."""
    import numpy as np

    flat = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    return [int(v) for pair in zip(edges[0::2], edges[1::2] - edges[0::2]) for v in pair]


def make_items(work: Path, n: int) -> list[dict]:
    """``n`` (source, edit, mask) triples at 512 px: shapes scenes, the edit a recoloured object plus
    noise, the mask its object's (run-length coded), one with an empty mask."""
    import random

    import numpy as np
    from PIL import Image

    from locedit.world.edits import sample_edit

    rng, noise = random.Random(7), np.random.default_rng(7)
    items = []
    work.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        e = sample_edit(rng, "colour")
        src = e.render_source(SIZE)
        tgt = np.clip(e.render_target(SIZE).astype(int) + noise.integers(-12, 13, src.shape), 0, 255).astype(np.uint8)
        mask = e.mask(SIZE).astype(np.uint8) if k < n - 1 else np.zeros((SIZE, SIZE), np.uint8)
        Image.fromarray(src).save(work / f"src-{k}.png")
        Image.fromarray(tgt).save(work / f"tgt-{k}.png")
        items.append({"src": str(work / f"src-{k}.png"), "tgt": str(work / f"tgt-{k}.png"), "rle": rle(mask)})
    return items


def locedit_side(items: list[dict]) -> dict:
    """locedit's decode and metrics, as ``locedit bench`` computes them (``bg_*``: the unedited part)."""
    import numpy as np
    import torch
    from PIL import Image

    from locedit.bench import decode_pie_mask
    from locedit.metrics import mse, pie_masked, psnr, ssim

    out = []
    for it in items:
        a, b = (torch.from_numpy(np.array(Image.open(it[k]).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
                for k in ("src", "tgt"))
        m = decode_pie_mask(it["rle"], SIZE)
        mask = torch.from_numpy(m.astype(np.float32))[None, None]
        row = {"mask": m}
        for name, fn in (("psnr", psnr), ("mse", mse), ("ssim", ssim)):
            row[name] = float(fn(a, b)[0])
            if (1 - m).sum():
                row[f"{name}_unedit_part"] = float(fn(pie_masked(a, mask), pie_masked(b, mask))[0])
            if m.sum():
                row[f"{name}_edit_part"] = float(fn(a * mask, b * mask)[0])
        out.append(row)
    return out


def run(args) -> dict:
    import numpy as np

    work = Path(args.work).expanduser()
    checkout = Path(args.checkout).expanduser().resolve()
    if not (checkout / "evaluation" / "matrics_calculator.py").is_file():
        raise PeerError(f"{checkout} has no evaluation/matrics_calculator.py (clone {PEER.repository})")
    python = build_env(PEER, work)
    items = make_items(work / PEER.name / "inputs", args.n)
    official = run_process(python, DRIVERS / "pnp_metrics_official.py", {"items": items, "metrics": list(METRICS),
                                                                          "method": "pixel"},
                           work / PEER.name / "official.json", python_path=[checkout, SHIMS])
    theirs = official["rows"]
    masks = np.load(work / PEER.name / "official.npz")
    ours = locedit_side(items)
    diffs: dict[str, float] = {}
    for k, (o, l) in enumerate(zip(theirs, ours)):
        diffs["mask"] = max(diffs.get("mask", 0.0), float(np.abs(masks[f"mask{k}"] - l["mask"]).max()))
        for metric in METRICS:
            if o[metric] == "nan":
                assert metric not in l, (k, metric)
                continue
            diffs[metric] = max(diffs.get(metric, 0.0), abs(float(o[metric]) - l[metric]))
    return {"commit": checkout_commit(checkout), "n": args.n, "max_abs_diff": diffs,
            "official_first": theirs[0], "environment": list(PEER.requirements)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkout", required=True, help="your clone of cure-lab/PnPInversion")
    p.add_argument("--work", default=str(DEFAULT_WORK))
    p.add_argument("--n", type=int, default=6, help="image pairs (the last with an empty mask)")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    try:
        result = run(args)
    except PeerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"PnPInversion evaluation @ {result['commit'][:10]}, {args.n} pairs at {SIZE} px: largest |difference|")
    print("| metric | max abs diff |\n|---|---:|")
    for k, v in result["max_abs_diff"].items():
        print(f"| {k} | {v:.2e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
