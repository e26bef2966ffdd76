"""UNet efficiency of locedit's side of a peer's methods, at any step count, without the official code.

    python bench/peers/efficiency.py pnpinversion --size 64 --steps 50
    python bench/peers/efficiency.py lime --size 64 --steps 50 --methods lime-localize,lime-edit-mask

UNet efficiency is the time that plain UNet calls of the same batch sizes take (no controller,
best of three, measured in the same process after the work) divided by the wall time of the whole
edit, encode, inversion, sampling and decode included: 1.0 means the edit costs nothing but its
UNet calls. The side-by-side runs (``run.py``) report it at their few steps, where encoding and
decoding weigh most; this script runs the locedit side alone (the same driver, inputs and
``--preset official`` options as ``run.py``; each run a fresh process) at the step count the goal
is stated for (50). Methods that backpropagate (null-text, SPDInv, the guidance methods) count only
their forward calls in the numerator, so theirs is lower by construction.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_WORK, DRIVERS, run_process, summarise  # noqa: E402
from run import (MALLOC, PEERS, _calls, checked_run, chosen_methods, method_spec, shared_inputs,  # noqa: E402
                 shared_options)


def measure(args) -> dict:
    mod = importlib.import_module(PEERS[args.peer])
    methods = chosen_methods(mod.PEER, args.methods)
    work = Path(args.work).expanduser()
    base = shared_inputs(mod, work, args.size, args.steps)
    runs = work / mod.PEER.name / "efficiency"
    rows = []
    for method in methods:
        spec = method_spec(base, args, method)
        figs = []
        for r in range(args.repeats):
            fig = run_process(sys.executable, DRIVERS / "locedit_side.py", spec,
                              runs / f"{method}-{args.size}-{args.steps}-{r}.json", env_extra=MALLOC[args.malloc])
            figs.append(fig)
            print(f"[{mod.PEER.name}] {method} #{r}: {fig['seconds']:.1f} s, UNet {_calls(fig['unet_calls'])}, "
                  f"efficiency {fig['unet_efficiency']:.2f}", file=sys.stderr)
        plain = sum(n * figs[0]["plain_unet_seconds"][b] for b, n in figs[0]["unet_calls"].items())
        rows.append({"method": method, "unet_calls": figs[0]["unet_calls"], "plain_unet_seconds": plain,
                     **{k: summarise([f[k] for f in figs])
                        for k in ("seconds", "unet_efficiency", "peak_rss_gib", "work_rss_gib")}})
    return {"peer": mod.PEER.name, "size": args.size, "steps": args.steps, "device": args.device,
            "repeats": args.repeats, "malloc": args.malloc,
            "machine": f"{platform.machine()}, {platform.python_version()}", "rows": rows}


def table(result: dict) -> str:
    lines = [f"{result['peer']} (locedit side), {result['size']} px, {result['steps']} steps, {result['device']}, "
             f"{result['repeats']} repeats, glibc malloc {result['malloc']} (time: min / median)", "",
             "| method | UNet calls | wall s | plain UNet s (same calls) | UNet efficiency (median) | "
             "working RSS GiB |", "|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {_calls(r['unet_calls'])} | {r['seconds']['min']:.1f} / "
                     f"{r['seconds']['median']:.1f} | {r['plain_unet_seconds']:.1f} | "
                     f"{r['unet_efficiency']['median']:.2f} | {r['work_rss_gib']['median']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("peer", choices=sorted(PEERS), help="whose methods (the locedit side of run.py's rows)")
    p.add_argument("--work", default=str(DEFAULT_WORK), help="model, inputs and runs (shared with run.py)")
    shared_options(p, size=64, steps=50, steps_help="the goal's", repeats=1)
    return checked_run(p, argv, measure, table)


if __name__ == "__main__":
    sys.exit(main())
