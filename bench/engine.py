"""Engine benchmark: wall time and UNet evaluations per inversion and per editing engine.

Not a test. Prints a Markdown table (and JSON with --json) for one architecture:

    python bench/engine.py                      # tiny random model, CPU, 50 steps
    python bench/engine.py --arch sd15 --device cuda --dtype fp16   # SD 1.x architecture, 512x512

``sd15`` builds Stable Diffusion 1.x's UNet, VAE and CLIP text encoder with random weights: the
compute and memory are those of the real model, the images are noise. On a CPU, use
``--arch sd15 --steps 2`` to measure the cost of one step.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

import torch

from locedit import pipeline
from locedit.control import P2POptions
from locedit.methods import P2PEditOptions
from locedit.diffusion.loading import resolve_device, resolve_dtype
from locedit.diffusion.model import finish_bundle
from locedit.diffusion.tiny import sd15_components, tiny_bundle
from locedit.inversion import INVERSIONS


def sd15_bundle(device, dtype):
    """Stable Diffusion 1.x architecture at 512x512, random weights (:func:`sd15_components`)."""
    unet, vae, te, tok, cfg = sd15_components(seed=0, image_size=512)
    return finish_bundle(unet, vae, te, tok, cfg, "sd15-random", device, dtype)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS, GiB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--inversions", default=",".join(INVERSIONS))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    bundle = tiny_bundle(seed=0, device=device, dtype=dtype) if args.arch == "tiny" else sd15_bundle(device, dtype)
    size = bundle.image_size
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=g)
    src, tgt = "a red cat sitting on the grass", "a blue cat sitting on the grass"
    rows = []
    base = None  # the trajectory the engines edit: null-text's when it ran, else DDIM's
    for name in args.inversions.split(","):
        _peak_reset(device)
        _sync(device)
        calls0, t0 = bundle.unet_calls, time.perf_counter()
        traj = pipeline.invert(bundle, image, src, name, args.steps)
        _sync(device)
        rows.append({"stage": "inversion", "method": name, "seconds": time.perf_counter() - t0,
                     "unet_calls": bundle.unet_calls - calls0, "peak_gib": _peak(device)})
        print(f"{name}: {rows[-1]['seconds']:.2f} s", file=sys.stderr)
        if name == "null-text":
            base = traj
    engines = {  # label -> (P2P options, blend words)
        "p2p replace": (P2POptions(mode="replace"), None),
        "p2p refine + word blend": (P2POptions(mode="refine"), ("cat", "cat")),
        "p2p reweight": (P2POptions(mode="reweight", reweight=(("blue", 2.0),)), None),
    }
    if base is None:
        base = pipeline.invert(bundle, image, src, "ddim", args.steps)
    for label, (opts, blend_words) in engines.items():
        _peak_reset(device)
        _sync(device)
        t0 = time.perf_counter()
        res = pipeline.edit(bundle, None, src, tgt, trajectory=base, options=P2PEditOptions(opts),
                            blend_words=blend_words)
        _sync(device)
        rows.append({"stage": "edit", "method": label, "seconds": time.perf_counter() - t0,
                     "unet_calls": res.sample.unet_calls, "peak_gib": _peak(device)})
        print(f"{label}: {rows[-1]['seconds']:.2f} s", file=sys.stderr)
    machine = (f"{platform.machine()} {torch.get_num_threads()} threads"
               if device.type == "cpu" else torch.cuda.get_device_name(device))
    print(f"\n{args.arch} ({size}x{size}), {args.steps} steps, {args.dtype}, {machine}, torch {torch.__version__}\n")
    peak_label = "peak GPU GiB" if device.type == "cuda" else "process peak RSS GiB"
    print(f"| stage | method | seconds | UNet calls | {peak_label} |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['method']} | {r['seconds']:.2f} | {r['unet_calls']} | {r['peak_gib']:.2f} |")
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
