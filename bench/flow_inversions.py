"""Every flow inversion on one flow model, over the source images of a dataset (issue 34: the inversions
beside the editors in docs/methods.md's ShapesEdit table): each image inverted under its caption and
sampled back (``locedit.api.flow_invert``), the reconstruction's PSNR against the image, the VAE round
trip's (what an exact inversion gives back), model calls and seconds.

    python bench/flow_inversions.py --model shapes-flow --dataset shapes:n=30,seed=0,kinds=colour+shape
    python bench/flow_inversions.py --model ... --inversions euler,rf-solver --steps 28 --json out.json

Prints a Markdown table; ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    from locedit.flow.inversions import FLOW_INVERSIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a FLUX or SD3 diffusers folder or hub id, or shapes-flow (built in)")
    p.add_argument("--dataset", default="shapes:n=30,seed=0,kinds=colour+shape", help="as locedit bench's --dataset")
    p.add_argument("--inversions", default=",".join(FLOW_INVERSIONS), help="comma-separated (default: all)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    names = args.inversions.split(",")
    bad = [n for n in names if n not in FLOW_INVERSIONS]
    if bad:
        print(f"error: unknown flow inversion {bad[0]!r}; choose from {', '.join(FLOW_INVERSIONS)}", file=sys.stderr)
        return 2

    import numpy as np

    from locedit.api import flow_invert
    from locedit.bench import open_dataset
    from locedit.diffusion import load_model

    bundle = load_model(args.model, "cpu")
    items = list(open_dataset(args.dataset))
    rows = []
    for name in names:
        if bundle.family not in FLOW_INVERSIONS[name].families:
            print(f"{name}: not on {bundle.family} models, skipped", file=sys.stderr)
            continue
        psnr, vae, calls, t0 = [], [], [], time.perf_counter()
        for item in items:
            r = flow_invert(item.image, item.source_prompt, model=args.model, inversion=name, steps=args.steps,
                            bundle=bundle)
            psnr.append(r.psnr)
            vae.append(r.vae_psnr)
            calls.append(sum(r.model_calls))
        seconds = (time.perf_counter() - t0) / len(items)
        rows.append({"inversion": name, "psnr": float(np.mean(psnr)), "vae_psnr": float(np.mean(vae)),
                     "calls": float(np.mean(calls)), "seconds": seconds, "n": len(items)})
        print(f"{name}: {rows[-1]['psnr']:.2f} dB", file=sys.stderr)
    print(f"{args.model}, {args.dataset}, {args.steps} steps: inversion then sampling back on the caption\n")
    print("| inversion | reconstruction PSNR (dB) | VAE round trip (dB) | model calls | s / image |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['inversion']} | {r['psnr']:.2f} | {r['vae_psnr']:.2f} | {r['calls']:.0f} | {r['seconds']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "dataset": args.dataset, "steps": args.steps,
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
