"""What ``--grad-checkpointing`` saves and costs: the methods that take gradients through the UNet
(null-text inversion, SPDInv, LocInv's token learning, MAG-Edit's latent guidance), each run in a
fresh process with checkpointing off and on, on Stable Diffusion 1.x's architecture with random
weights (the compute and memory of the real model; the images are noise).

Not a test. Prints a Markdown table (and JSON with --json):

    python bench/checkpointing.py                          # CPU, 256 px, 2 steps
    python bench/checkpointing.py --device cuda --size 512 --steps 5

Memory is the process's working memory: peak RSS during the work less the RSS when it starts (on
CPU), or ``torch.cuda.max_memory_allocated`` (on a GPU). Wall time includes the recomputation.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

WORK = {  # name -> what runs (few inner iterations: the cost per backward is the point)
    "null-text": "invert null-text, 3 iterations per step",
    "spd": "invert spd, 3 iterations per step",
    "locinv": "locinv, 3 token steps and 3 null-text iterations per step",
    "mag-edit": "mag-edit on a ddim inversion, 3 guidance iterations on the first step",
}


def child(name: str, size: int, steps: int, device: str, ckpt: bool) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "peers" / "drivers"))
    import measure
    import torch

    from locedit import pipeline
    from locedit.diffusion.model import finish_bundle
    from locedit.diffusion.tiny import sd15_components
    from locedit.masks import Region
    from locedit.methods.locinv import LocInvEditOptions
    from locedit.methods.mag_edit import MAGEditOptions
    from locedit.inversion import NullTextOptions, SPDOptions
    from locedit.options import replace_path

    unet, vae, te, tok, cfg = sd15_components(seed=0, image_size=size)
    bundle = finish_bundle(unet, vae, te, tok, cfg, "sd15-random", torch.device(device), torch.float32)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=g).to(device)
    mask = torch.zeros(1, 1, size, size, device=device)
    mask[..., size // 4: 3 * size // 4, : size // 2] = 1
    src, tgt = "a cat sitting on the grass", "a dog sitting on the grass"
    eo = pipeline.EditOptions(grad_checkpointing=ckpt)
    with measure.Meter(bundle.unet, device, [bundle.unet, bundle.vae, bundle.text_encoder]) as meter:
        if name == "null-text":
            pipeline.invert(bundle, image, src, "null-text", steps, options=NullTextOptions(inner_steps=3, epsilon=0.0),
                            grad_checkpointing=ckpt)
        elif name == "spd":
            pipeline.invert(bundle, image, src, "spd", steps, options=SPDOptions(max_steps=3, threshold=1e-30),
                            grad_checkpointing=ckpt)
        elif name == "locinv":
            opts = replace_path(LocInvEditOptions(), {"locinv.max_inner": 3, "locinv.nti_mode": "restart",
                                                      "locinv.restart_iterations": 3})
            pipeline.edit(bundle, image, src, tgt, method="locinv", options=opts, regions=[Region("cat", mask)],
                          num_steps=steps, edit_options=eo)
        else:
            opts = replace_path(MAGEditOptions(), {"guidance.guided_steps": 1, "guidance.iterations": 3})
            pipeline.edit(bundle, image, src, tgt, method="mag-edit", inversion="ddim", options=opts,
                          regions=[Region("dog", mask)], num_steps=steps, edit_options=eo)
    return meter.figures()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="image size, a multiple of 64 (default 256)")
    p.add_argument("--steps", type=int, default=2, help="sampling steps (default 2)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--methods", default=",".join(WORK), help=f"comma-separated subset of {', '.join(WORK)}")
    p.add_argument("--json", default="", help="write the figures here")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "CKPT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.size % 64 or a.size < 64 or a.steps < 1:
        p.error("--size must be a multiple of 64 and --steps >= 1")
    if a.child:
        print(json.dumps(child(a.child[0], a.size, a.steps, a.device, a.child[1] == "1")))
        return 0
    methods = [m for m in a.methods.split(",") if m]
    bad = [m for m in methods if m not in WORK]
    if bad:
        p.error(f"unknown method {bad[0]!r}; choose from {', '.join(WORK)}")
    gpu = a.device == "cuda"
    rows = []
    for m in methods:
        figs = {}
        for ckpt in (False, True):  # each in a fresh process: one peak per run
            out = subprocess.run([sys.executable, __file__, "--size", str(a.size), "--steps", str(a.steps),
                                  "--device", a.device, "--child", m, "1" if ckpt else "0"],
                                 capture_output=True, text=True)
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                return 1
            figs[ckpt] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"[{m}] checkpointing {'on' if ckpt else 'off'}: {figs[ckpt]['seconds']:.1f} s", file=sys.stderr)
        rows.append({"method": m, "work": WORK[m], "off": figs[False], "on": figs[True]})
    key, label = ("cuda_peak_gib", "peak GPU GiB") if gpu else ("work_rss_gib", "working RSS GiB")
    print(f"{a.size} px, {a.steps} steps, {a.device} ({platform.machine()}), SD 1.x architecture, random weights\n")
    print(f"| method | what runs | s off / on | {label} off / on | memory ratio |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        off, on = r["off"], r["on"]
        print(f"| {r['method']} | {r['work']} | {off['seconds']:.1f} / {on['seconds']:.1f} | "
              f"{off[key]:.2f} / {on[key]:.2f} | {on[key] / max(off[key], 1e-9):.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"size": a.size, "steps": a.steps, "device": a.device, "rows": rows},
                                           indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
