"""locedit side by side with the authors' code: the same output, in less time and memory?

    python bench/peers/run.py pnpinversion --checkout ~/src/PnPInversion            # CPU, 256 px, 10 steps
    python bench/peers/run.py pnpinversion --checkout ~/src/PnPInversion --device cuda --size 512 --steps 50

For one official implementation (``--checkout``: your own clone of it; nothing of it is vendored or
committed) this builds its pinned environment from the package registries (once, under
``--work``), copies the checkout and adapts sizes and devices by the exact patches its module lists,
writes one random-weight SD 1.x model folder that both sides load, and runs each of its methods and
locedit's ``--preset official`` equivalent on the same image, prompts and steps: every run in a
fresh process, the two sides alternated, ``--repeats`` times. It prints a Markdown table (largest
output differences, wall time min/median, UNet calls by batch size, peak memory) and writes the
figures as JSON (``--json``). docs/peers.md holds the results and every adjustment made.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEFAULT_WORK, DRIVERS, SHIMS, PeerError, build_env, checkout_commit, compare, make_image,  # noqa: E402
                    make_model, prepare_checkout, run_process, summarise)

PEERS = {"pnpinversion": "pnpinversion", "spdinv": "spdinv", "mag-edit": "mag_edit", "mde-edit": "mde_edit", "lime": "lime_ip2p", "dpl": "dpl"}  # name -> module under bench/peers
SOURCE, TARGET, BLEND = "a cat sitting on the grass", "a dog sitting on the grass", ("cat", "dog")


# glibc settings of both sides' processes. "live": blocks of 1 MiB and more are mapped and unmapped
# with each tensor and no arena keeps freed memory, so the peak RSS follows the live tensors rather
# than what the allocator happened to keep cached (which differs between two programs that hold the
# same tensors); "default": glibc's own thresholds, as the first tables of docs/peers.md were measured
MALLOC = {"live": {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "2"},
          "default": {}}


def _calls(c: dict) -> str:
    return " + ".join(f"{n}x{b}" for b, n in sorted(c.items(), key=lambda kv: int(kv[0])))


def shared_inputs(mod, work: Path, size: int, steps: int) -> dict:
    """What both sides are given (the model folder, image, box masks, prompts and the peer's own
    settings), written under ``work`` when missing."""
    peer = mod.PEER
    model = work / f"model-{'ip2p' if peer.instruct else 'sd15'}-{size}"
    make_model(model, size, instruct=peer.instruct)
    image = make_image(work / f"input-{size}.png", size)
    boxes = [str(image.with_name(f"{image.stem}-box-{s}.png")) for s in ("left", "right")]
    return {"model": str(model), "image": str(image), "masks": boxes, "source": SOURCE, "target": TARGET,
            "size": size, **(mod.spec(steps) if hasattr(mod, "spec") else {}),
            **(mod.inputs(image) if hasattr(mod, "inputs") else {})}


def chosen_methods(peer, methods: str) -> list[str]:
    """``--methods`` (comma-separated; empty: all of the peer's), each checked against the peer's."""
    chosen = methods.split(",") if methods else list(peer.methods)
    unknown = [m for m in chosen if m not in peer.methods]
    if unknown:
        raise PeerError(f"{peer.name} has no method {unknown[0]!r}; choose from {', '.join(peer.methods)}")
    return chosen


def method_spec(base: dict, args, method: str, src: str = "") -> dict:
    """One run's arguments: the shared inputs, the method and the run settings (``src``: the
    adapted official copy, which only the official driver reads)."""
    spec = {**base, "blend_words": list(BLEND), "steps": args.steps, "device": args.device,
            "method": method, "src": src, "peer": PEERS[args.peer]}
    if args.threads:
        spec["threads"] = args.threads
    return spec


def run(args) -> dict:
    mod = importlib.import_module(PEERS[args.peer])
    peer = mod.PEER
    work = Path(args.work).expanduser()
    checkout = Path(args.checkout).expanduser().resolve()
    methods = chosen_methods(peer, args.methods)
    python = build_env(peer, work)
    src = prepare_checkout(peer, checkout, work, args.size, args.device, args.steps)
    base = shared_inputs(mod, work, args.size, args.steps)
    runs = work / peer.name / "runs"
    official_path = [src, *(src / p for p in peer.python_path), *([SHIMS] if peer.shims else [])]
    run_process(python, DRIVERS / "components.py", base, runs / "components-official.json")
    run_process(sys.executable, DRIVERS / "components.py", base, runs / "components-locedit.json")
    model_diff = compare_components(runs / "components-official.npz", runs / "components-locedit.npz")
    print(f"[{peer.name}] the model as both environments read it: " +
          ", ".join(f"{k} {v:.1e}" for k, v in model_diff.items()), file=sys.stderr)
    rows = []
    for method in methods:
        spec = method_spec(base, args, method, src=str(src))
        sides = {"official": [], "locedit": []}
        for r in range(args.repeats):
            order = ("official", "locedit") if r % 2 == 0 else ("locedit", "official")
            for side in order:
                out = runs / f"{method}-{side}-{r}.json"
                if side == "official":
                    fig = run_process(python, DRIVERS / mod.DRIVER, spec, out, env_extra=MALLOC[args.malloc],
                                      python_path=official_path)
                else:
                    fig = run_process(sys.executable, DRIVERS / "locedit_side.py", spec, out,
                                      env_extra=MALLOC[args.malloc])
                sides[side].append(fig)
                print(f"[{peer.name}] {method} {side} #{r}: {fig['seconds']:.1f} s, "
                      f"UNet {_calls(fig['unet_calls'])}, peak RSS {fig['peak_rss_gib']:.2f} GiB", file=sys.stderr)
        diff = compare(runs / f"{method}-official-0.npz", runs / f"{method}-locedit-0.npz")
        row = {"method": method, **diff}
        for side, figs in sides.items():
            row[side] = {key: summarise([f[key] for f in figs])
                         for key in ("seconds", "peak_rss_gib", "base_rss_gib", "work_rss_gib")}
            row[side]["unet_calls"] = figs[0]["unet_calls"]
            if "unet_efficiency" in figs[0]:
                row[side]["unet_efficiency"] = summarise([f["unet_efficiency"] for f in figs])
            if "cuda_peak_gib" in figs[0]:
                row[side]["cuda_peak_gib"] = summarise([f["cuda_peak_gib"] for f in figs])
        rows.append(row)
    return {"peer": peer.name, "repository": peer.repository, "commit": checkout_commit(checkout),
            "model_diff": model_diff, "size": args.size, "steps": args.steps, "device": args.device, "repeats": args.repeats,
            "malloc": args.malloc,
            "machine": f"{platform.machine()}, {platform.python_version()}", "rows": rows,
            "environment": [*peer.requirements, *(r for r, _ in peer.adjustments)],
            "patches": [{"file": p.file, "old": p.old, "new": p.new, "why": p.why}
                        for p in peer.patches(args.size, args.device, args.steps)]}


def compare_components(official: Path, ours: Path) -> dict:
    import numpy as np

    a, b = np.load(official), np.load(ours)
    return {k: float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a.files}


def table(result: dict) -> str:
    gpu = result["device"].startswith("cuda")
    mem, mem_label = ("cuda_peak_gib", "peak GPU GiB") if gpu else ("work_rss_gib", "working RSS GiB")
    lines = [f"{result['peer']} @ {result['commit'][:10]}, {result['size']} px, {result['steps']} steps, "
             f"{result['device']}, {result['repeats']} repeats, glibc malloc {result.get('malloc', 'default')} "
             "(time: min / median; memory: median)", "",
             f"| method | max diff latents (of max) | max diff image (levels) | official s | locedit s | speed-up | "
             f"UNet calls official | UNet calls locedit | peak RSS GiB official / locedit | "
             f"{mem_label} official / locedit | ratio | locedit UNet efficiency |",
             "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        o, l = r["official"], r["locedit"]
        speed = o["seconds"]["median"] / l["seconds"]["median"]
        ratio = l[mem]["median"] / o[mem]["median"]
        diff_latents = (f"{r['max_diff_latents']:.1e} ({r.get('latent_scale', 0):.1f})" if "max_diff_latents" in r
                        else "not compared")
        diff_image = f"{r['max_diff_image']:.0f}" if "max_diff_image" in r else "not compared"
        lines.append(
            f"| {r['method']} | {diff_latents} | "
            f"{diff_image} | {o['seconds']['min']:.1f} / {o['seconds']['median']:.1f} | "
            f"{l['seconds']['min']:.1f} / {l['seconds']['median']:.1f} | {speed:.2f}x | {_calls(o['unet_calls'])} | "
            f"{_calls(l['unet_calls'])} | {o['peak_rss_gib']['median']:.2f} / {l['peak_rss_gib']['median']:.2f} | "
            f"{o[mem]['median']:.2f} / {l[mem]['median']:.2f} | {ratio:.2f} | "
            f"{l.get('unet_efficiency', {}).get('median', float('nan')):.2f} |")
    extras = [(r["method"], k[len("max_diff_"):], v) for r in result["rows"] for k, v in r.items()
              if k.startswith("max_diff_") and k not in ("max_diff_latents", "max_diff_image")]
    if extras:
        lines += ["", "Intermediate results (largest difference): " +
                  "; ".join(f"{m} {k} {v:.1e}" for m, k, v in extras)]
    md = result.get("model_diff", {})
    if md:
        lines += ["", "The model as both environments read it (largest difference): " +
                  ", ".join(f"{k} {v:.1e}" for k, v in md.items())]
    return "\n".join(lines)


def adjustments(name: str, size: int, device: str, steps: int) -> str:
    """docs/peers.md's section for one peer: its environment (pins, then each adjustment with its
    reason, then the notes) and the patches at that size, device and step count."""
    mod = importlib.import_module(PEERS[name])
    peer = mod.PEER
    lines = [f"**{peer.name}** ({peer.repository}): " + ", ".join(f"`{r}`" for r in peer.requirements) + ", then:"]
    lines += [f"- `{r}`: {why}" for r, why in peer.adjustments]
    lines += [f"- {n}" for n in peer.notes]
    patches = peer.patches(size, device, steps)
    lines += ["", f"Patches of the copied checkout at {size} px, {steps} steps on {device.upper()} (each must match "
              "exactly the stated number of times):", "", "| file | from | to | why |", "|---|---|---|---|"]
    for p in patches:
        def cell(t):
            return "`" + t.replace("|", "\\|") + "`"
        lines.append(f"| `{p.file}` | {cell(p.old)}{f' x{p.count}' if p.count != 1 else ''} | {cell(p.new)} | {p.why} |")
    if not patches:
        lines[-4:] = ["", f"No patches at {size} px on {device.upper()}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["adjustments"]:  # docs/peers.md's environment and patch list of one peer
        q = argparse.ArgumentParser(prog="run.py adjustments")
        q.add_argument("peer", choices=sorted(PEERS))
        q.add_argument("--size", type=int, default=64)
        q.add_argument("--steps", type=int, default=5)
        q.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
        a = q.parse_args(argv[1:])
        print(adjustments(a.peer, a.size, a.device, a.steps))
        return 0
    if argv[:1] == ["table"]:  # re-print the table of a saved --json file
        if len(argv) != 2 or not Path(argv[1]).is_file():
            print("usage: run.py table FIGURES.json", file=sys.stderr)
            return 2
        print(table(json.loads(Path(argv[1]).read_text())))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="python bench/peers/run.py table FIGURES.json re-prints a saved table; "
                                       "run.py adjustments PEER [--size --steps --device] prints a peer's "
                                       "environment and patches as Markdown")
    p.add_argument("peer", choices=sorted(PEERS))
    p.add_argument("--checkout", required=True, help="your clone of the official repository")
    p.add_argument("--work", default=str(DEFAULT_WORK), help="environments, adapted copies, model, runs")
    shared_options(p, size=256, steps=10, steps_help="the papers use 50", repeats=3)
    return checked_run(p, argv, run, table)


def shared_options(p: argparse.ArgumentParser, size: int, steps: int, steps_help: str, repeats: int,
                   size_step: int = 64) -> None:
    """The options run.py, efficiency.py and flux_run.py share (after each one's own)."""
    p.add_argument("--size", type=int, default=size,
                   help=f"image size in pixels, a multiple of {size_step} (default {size})")
    p.add_argument("--steps", type=int, default=steps, help=f"sampling steps (default {steps}; {steps_help})")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (default: torch's choice)")
    p.add_argument("--malloc", default="live", choices=sorted(MALLOC),
                   help="glibc allocator settings of every run: live (peak RSS follows the live tensors; "
                        "default) or default (glibc's caching thresholds)")
    p.add_argument("--methods", default="", help="comma-separated subset of the peer's methods")
    p.add_argument("--json", default="", help="write the figures here")


def checked_run(p: argparse.ArgumentParser, argv, work, table, sizes: tuple[int, int, int] = (64, 64, 1024),
                min_steps: int = 1) -> int:
    """Parse, check the shared options (``sizes``: the size's step, least and largest), run
    ``work(args)`` and print ``table(result)``; exit 2 with one line on a :class:`PeerError`."""
    args = p.parse_args(argv)
    step, least, largest = sizes
    if args.size % step or not least <= args.size <= largest:
        p.error(f"--size must be a multiple of {step} between {least} and {largest}")
    if not min_steps <= args.steps <= 999 or args.repeats < 1:
        p.error(f"--steps must be in {min_steps}..999 and --repeats >= 1")
    try:
        result = work(args)
    except PeerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
