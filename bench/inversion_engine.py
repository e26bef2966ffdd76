"""Inversions x editing engines on ShapesEdit: the shape of SPDInv's Table 1 on the bundled model.

    python bench/inversion_engine.py --n 10 --out runs/inversion-engine \
        --table docs/bench/inversion-engine.md --plot docs/img/inversion-engine.png

Each item is inverted once per inversion (its time recorded), then edited with every engine on that
trajectory; rows go to ``OUT/rows.jsonl`` as they finish, so a stopped run resumes where it was.
The metrics are the bench's (:func:`locedit.bench.runner.item_metrics`): PSNR/SSIM outside the
edited objects against the source, PSNR inside them against the exact target render, and the
oracle's verdict. Engines take the bench's inputs (P2P: the item's blend words); PnP runs with the
empty negative prompt on every inversion (null-text and NPI refuse the scripts' negative prompt,
and the bundled model's vocabulary has none of its words). ``nmg@sd`` is NMG with the gradient
scale per latent element of SD at 512 px (5e3 x 1,024 / 16,384 = 312.5).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

INVERSIONS = ("ddim", "null-text", "npi", "direct", "spd", "aidi", "nmg", "nmg@sd")
ENGINES = ("p2p", "masactrl", "pnp")


def inversion_args(name: str):
    """(registry inversion, its options) for a column name."""
    from locedit.inversion import INVERSIONS as REG
    from locedit.inversion import NMGOptions

    if name == "nmg@sd":
        return "nmg", NMGOptions(grad_scale=5e3 * 1024 / 16384)
    return name, REG[name][0]()


def engine_args(name: str, item, to_model) -> dict:
    from locedit.methods import PnPOptions

    if name == "p2p":
        return {"blend_words": tuple(item.blend_words)} if item.blend_words else {}
    if name == "pnp":
        return {"options": PnPOptions(negative_prompt="")}
    return {}


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: redone
            continue
    return rows


def run(args) -> Path:
    import torch

    from locedit import pipeline
    from locedit.bench.datasets import open_dataset
    from locedit.bench.runner import item_metrics
    from locedit.diffusion import load_model
    from locedit.imaging import Fit
    from locedit.progress import tqdm_progress

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = {(r["item"], r["inversion"], r["engine"]) for r in read_rows(rows_path)}
    bundle = load_model(args.model, "cpu", "fp32")
    items = list(open_dataset(f"shapes:n={args.n},seed={args.seed},kinds=colour+shape"))
    todo = [(item, inv) for item in items for inv in args.inversions
            if any((item.id, inv, e) not in done for e in args.engines)]
    for item, inv in tqdm_progress(todo, "inversion x engine"):
        torch.manual_seed(args.seed)
        fit = Fit.plan(*item.image.shape[-2:], bundle.image_size, "pad")
        image = fit.to_model(item.image)
        name, options = inversion_args(inv)
        t0 = time.perf_counter()
        traj = pipeline.invert(bundle, image, item.source_prompt, name, args.steps, 7.5, options)
        inv_seconds = time.perf_counter() - t0
        for engine in args.engines:
            if (item.id, inv, engine) in done:
                continue
            t1 = time.perf_counter()
            res = pipeline.edit(bundle, None, item.source_prompt, item.target_prompt, method=engine, trajectory=traj,
                                **engine_args(engine, item, fit))
            edited = fit.from_model(res.edited.float().cpu())
            row = {"item": item.id, "edit_type": item.edit_type, "inversion": inv, "engine": engine,
                   "inversion_seconds": inv_seconds, "inversion_unet_calls": traj.stats.get("unet_calls", 0),
                   "edit_seconds": time.perf_counter() - t1, **item_metrics(item, edited)}
            with rows_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return rows_path


def summarise(rows: list[dict], inversions, engines) -> list[dict]:
    out = []
    for engine in engines:
        for inv in inversions:
            sel = [r for r in rows if r["engine"] == engine and r["inversion"] == inv]
            if not sel:
                continue

            def mean(key):
                vals = [r[key] for r in sel if key in r and not math.isnan(r[key])]
                return sum(vals) / len(vals) if vals else float("nan")

            out.append({"engine": engine, "inversion": inv, "n": len(sel), "outside_psnr": mean("outside_psnr"),
                        "outside_ssim": mean("outside_ssim"), "inside_psnr": mean("inside_psnr_to_target"),
                        "oracle": mean("oracle_success"), "inversion_seconds": mean("inversion_seconds"),
                        "inversion_calls": mean("inversion_unet_calls")})
    return out


def table(summary: list[dict]) -> str:
    lines = ["| engine | inversion | edits | PSNR outside [dB] | SSIM outside | PSNR inside vs target [dB] | oracle | "
             "inversion UNet calls | inversion s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['engine']} | {s['inversion']} | {s['n']} | {s['outside_psnr']:.2f} | {s['outside_ssim']:.3f} | "
                     f"{s['inside_psnr']:.2f} | {100 * s['oracle']:.0f}% | {s['inversion_calls']:.0f} | "
                     f"{s['inversion_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: str, engines) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(engines), figsize=(4.2 * len(engines), 3.8), sharex=True, sharey=True)
    for ax, engine in zip(axes, engines):
        for s in (s for s in summary if s["engine"] == engine):
            ax.scatter(s["outside_psnr"], s["inside_psnr"], s=20 + 6 * math.log1p(s["inversion_calls"]) ** 2)
            ax.annotate(s["inversion"], (s["outside_psnr"], s["inside_psnr"]), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_title(engine)
        ax.set_xlabel("PSNR outside the edit, vs source [dB]")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR inside, vs exact target [dB]")
    fig.suptitle("ShapesEdit, bundled model: inversion x engine (marker size ~ inversion UNet calls)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10, help="ShapesEdit items (colour and shape edits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--model", default="shapes")
    p.add_argument("--inversions", default=",".join(INVERSIONS))
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--out", required=True, help="folder for rows.jsonl (resumable)")
    p.add_argument("--table", help="write the Markdown table here")
    p.add_argument("--plot", help="write the PNG plot here")
    p.add_argument("--report-only", action="store_true", help="summarise OUT/rows.jsonl without running")
    args = p.parse_args(argv)
    args.inversions = [s for s in args.inversions.split(",") if s]
    args.engines = [s for s in args.engines.split(",") if s]
    bad = [s for s in args.inversions if s not in INVERSIONS] + [s for s in args.engines if s not in ENGINES]
    if bad:
        p.error(f"unknown inversion or engine: {', '.join(bad)}")
    rows_path = Path(args.out) / "rows.jsonl" if args.report_only else run(args)
    summary = summarise(read_rows(rows_path), args.inversions, args.engines)
    text = table(summary)
    print(text)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(text)
    if args.plot and summary:
        plot(summary, args.plot, args.engines)


if __name__ == "__main__":
    main()
