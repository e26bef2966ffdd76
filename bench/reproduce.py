"""Reproduce a published table: run its methods, inversions and settings, then put the run beside it.

    python bench/reproduce.py spdinv:table1 --model CompVis/stable-diffusion-v1-4 --data /data/PIE-Bench \
        --out-dir runs/spdinv-t1 --metrics pixel,lpips-squeeze,clip,dino      # on a GPU, the real table
    python bench/reproduce.py spdinv:table1 --model tiny-random --data PIE --steps 2 --limit 2 --out-dir r
                                                                              # end to end on this machine

One `locedit bench` run per inversion of the table (a run holds one inversion), into OUT/INVERSION,
with the table's methods on it and its steps and guidance (``--steps`` overrides them, and the report
says so); each run is resumable (run the same command again). Then `locedit report OUT/INVERSION
--against PAPER:TABLE` for each; OUT/README.md lists the runs. Rows whose inversion is not a
registry name (SPDInv's "ProxEdit", NPI with proximal guidance, which the bench has no flags for) or
whose method is no bench method (MAG-Edit's P2P+Re-weight) are skipped and listed; rows on
"default" (the paper names no inversion) run in OUT/default with each method's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def plan(table: dict) -> dict[str, list[str]]:
    """inversion -> the table's methods on it (registry names only; "default": each method's own)."""
    from locedit.bench.names import bench_methods
    from locedit.inversion import INVERSIONS

    out: dict[str, list[str]] = {}
    for row in table["rows"]:
        if (row["inversion"] in INVERSIONS or row["inversion"] == "default") and row["method"] in bench_methods():
            out.setdefault(row["inversion"], [])
            if row["method"] not in out[row["inversion"]]:
                out[row["inversion"]].append(row["method"])
    return out


def main(argv=None) -> int:
    from locedit.bench.report import reported_tables
    from locedit.cli import main as locedit

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", help="PAPER:TABLE, one of the shipped reported tables (e.g. spdinv:table1)")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="a PIE-Bench folder (mapping_file.json, annotation_images/)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--metrics", default="pixel", help="as locedit bench's (the table's need lpips-squeeze,clip,dino)")
    p.add_argument("--steps", type=int, help="override the table's steps (the report names the difference)")
    p.add_argument("--limit", type=int, help="only the first N items")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    tables = reported_tables()
    if args.table not in tables:
        print(f"error: no reported table {args.table!r}; shipped: {', '.join(tables)}", file=sys.stderr)
        return 2
    table = json.loads(tables[args.table].read_text())
    out = Path(args.out_dir)
    runs = plan(table)
    skipped = sorted({f"{r['method']} on {r['inversion']}" for r in table["rows"]
                      if r["method"] not in runs.get(r["inversion"], ())})
    for inversion, methods in runs.items():
        argv = ["bench", "--dataset", f"pie:{args.data}", "--methods", ",".join(methods), "--model", args.model,
                "--inversion", inversion,
                "--steps", str(args.steps or table["steps"]), "--guidance",
                str(table["guidance"]), "--metrics", args.metrics, "--device", args.device,
                "--out-dir", str(out / inversion)] + (["--limit", str(args.limit)] if args.limit else [])
        print(f"{args.table}: {inversion} x {', '.join(methods)}", file=sys.stderr)
        code = locedit(argv)
        if code:
            return code
        code = locedit(["report", str(out / inversion), "--against", args.table, "--quiet"])
        if code:
            return code
    lines = [f"# {table['paper']}, {table['table']}: reproduction\n", "| inversion | methods | report |", "|---|---|---|"]
    lines += [f"| {inv} | {', '.join(m)} | [{inv}/report.md]({inv}/report.md) |" for inv, m in runs.items()]
    if skipped:
        lines.append(f"\nSkipped (no bench method or inversion flags for them): {', '.join(skipped)}")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'README.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
