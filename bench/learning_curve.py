"""Plot the shapes text-to-image model's learning curve from a training run's logs.

    python bench/learning_curve.py train-state/t2i-v2 --out docs/img/shapes-curve.png

Reads ``log.jsonl`` (training loss every few steps) and ``curve.jsonl`` (gate 2, the oracle on
free generation, on 50 held-out captions every ``--eval-every`` steps) from each folder given, in
order (runs continued with ``--resume`` share one folder), and writes a two-panel PNG (loss and
gate 2 against samples seen) plus a Markdown table of the curve on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="training output folders (with log.jsonl, curve.jsonl, train.json)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--batch", type=int, default=64, help="samples per step (to plot against samples seen)")
    p.add_argument("--gate", type=float, default=0.80, help="gate 2's threshold, drawn as a line")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs, curve = [], []
    for run in map(Path, args.runs):
        logs += read_jsonl(run / "log.jsonl")
        curve += read_jsonl(run / "curve.jsonl")
    if not logs:
        raise SystemExit(f"no log.jsonl in {args.runs}")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] * args.batch / 1e3 for r in logs]
    a.plot(steps, [r.get("mse", r["loss"]) for r in logs], lw=0.8, label="noise MSE (unweighted)")
    a.set_xlabel("samples seen (thousands)")
    a.set_ylabel("training loss")
    a.set_yscale("log")
    a.legend()
    if curve:
        xs = [r["step"] * args.batch / 1e3 for r in curve]
        b.plot(xs, [100 * r["t2i_oracle"] for r in curve], "o-", label="objects right (gate 2)")
        b.plot(xs, [100 * r["t2i_background"] for r in curve], "s--", label="background right")
    b.axhline(100 * args.gate, color="gray", ls=":", label=f"gate {100 * args.gate:.0f}%")
    b.set_xlabel("samples seen (thousands)")
    b.set_ylabel("% of 50 held-out captions")
    b.set_ylim(0, 100)
    b.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print("| step | samples seen | gate 2: objects right | with textures | background right |")
    print("|---:|---:|---:|---:|---:|")
    for r in curve:
        print(f"| {r['step']:,} | {r['step'] * args.batch:,} | {100 * r['t2i_oracle']:.0f}% | "
              f"{100 * r['t2i_oracle_with_texture']:.0f}% | {100 * r['t2i_background']:.0f}% |")


if __name__ == "__main__":
    main()
