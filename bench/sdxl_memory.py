"""Memory of every method on SDXL's full architecture (random weights), measured at small sizes and
extrapolated to 1024 px (issue 18: "every method at 1024 px within 24 GB").

    python bench/sdxl_memory.py build                      # writes the random SDXL folder once (~7 GB bf16)
    python bench/sdxl_memory.py run --sizes 256,384        # each (row, size) in a fresh process; resumable
    python bench/sdxl_memory.py table                      # fit and print the table (docs/sdxl.md)
    python bench/sdxl_memory.py run --device cuda --dtype fp16 --sizes 512,768,1024   # on a GPU

A row is one edit: an inversion and a method, 5 steps (enough for every step window of the defaults -
P2P's self-attention replacement in the first 40 %, MAG-Edit's guided steps - to be open at least once),
with the fewest inner iterations that keep the method's memory pattern (an iteration's peak does not
depend on how many follow it). The figure is
the work's memory above the loaded weights: on CPU the process's peak RSS during the work less its
RSS when the work starts (weights read once beforehand); on GPU ``torch.cuda.max_memory_allocated``
less the weights' allocation. Each (row, size) runs in a fresh process, so nothing is shared.

The extrapolation to 1024 px (P = 16384 latent pixels) is ``work = a + b P + Q``: Q, the attention
probabilities the controllers materialise (self-attention at the latent/2 level is 4096 x 4096 per head
at 1024 px), is observed at the largest measured size and scaled by the fourth power of the side; a
and b are fitted to the rest over the measured sizes. The weights at fp16 (UNet, both text encoders;
the VAE in float32 as SDXL's VAE is upcast) are added. docs/sdxl.md derives the formula.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORK = Path(os.environ.get("LOCEDIT_SDXL_WORK", Path.home() / ".cache" / "locedit-sdxl"))
ROWS = {  # row -> (inversion or None, method)
    "ddim+p2p": ("ddim", "p2p"),
    "null-text+p2p": ("null-text", "p2p"),
    "npi+p2p": ("npi", "p2p"),
    "direct+p2p": ("direct", "p2p"),
    "spd+p2p": ("spd", "p2p"),
    "ddim+mag-edit": ("ddim", "mag-edit"),
    "ddim+mag-edit+ckpt": ("ddim", "mag-edit"),
    "ddim+mde-edit": ("ddim", "mde-edit"),
    "ddim+mde-edit+ckpt": ("ddim", "mde-edit"),
    "null-text+p2p+ckpt": ("null-text", "p2p"),
    "locinv": (None, "locinv"),
    "ddim+masactrl": ("ddim", "masactrl"),
    "ddim+pnp": ("ddim", "pnp"),
    "ddim+blended": ("ddim", "blended"),
    "sdedit": (None, "sdedit"),
    "ddim+diffedit": ("ddim", "diffedit"),
}
SRC = "a red square on the gray background"
TGT = "a blue square on the gray background"


def build(folder: Path) -> None:
    import torch

    from locedit.diffusion.loading import save_model
    from locedit.diffusion.model import finish_bundle
    from locedit.diffusion.tiny import sdxl_components

    torch.set_default_dtype(torch.bfloat16)  # random init straight into half the memory
    unet, vae, te, te2, tok, tok2, cfg = sdxl_components(seed=0)
    torch.set_default_dtype(torch.float32)
    b = finish_bundle(unet, vae, te, tok, cfg, "sdxl-random", torch.device("cpu"), torch.bfloat16,
                      text_encoder_2=te2, tokenizer_2=tok2, force_zeros_for_empty_prompt=True, vae_dtype=torch.float32)
    save_model(b, folder)
    print(f"wrote {folder}")


def _request(row: str, size: int):
    """(inversion, inversion options, method, method options, inputs) for a row at ``size`` px."""
    import torch

    from locedit.guidance import GuidanceOptions, LocInvOptions
    from locedit.inversion import NullTextOptions, SPDOptions
    from locedit.masks import Region
    from locedit.methods import (BlendedOptions, DiffEditOptions, LocInvEditOptions, MAGEditOptions, MasaCtrlOptions,
                                 MDEEditOptions, PnPOptions)

    inv, method = ROWS[row]
    m = torch.zeros(1, 1, size, size)
    m[..., size // 4: size * 5 // 8, size // 3: size * 2 // 3] = 1
    other = torch.zeros(1, 1, size, size)
    other[..., size * 5 // 8:, : size // 3] = 1
    guide = GuidanceOptions(guided_steps=3, iterations=2, step_size=2.5, sigma_scaling=True)
    inv_opts = {"null-text": NullTextOptions(inner_steps=2), "spd": SPDOptions(max_steps=2)}.get(inv)
    inputs = {
        "p2p": {"blend_words": ("square", "square")},
        "mag-edit": {"regions": (Region("blue", m),), "options": MAGEditOptions(guidance=guide)},
        "mde-edit": {"regions": (Region("square", m),), "attributes": (Region("blue", other),),
                     "options": MDEEditOptions(guidance=guide)},
        "locinv": {"regions": (Region("square", m),),
                   "options": LocInvEditOptions(locinv=LocInvOptions(max_inner=2, nti=NullTextOptions(inner_steps=2)))},
        "masactrl": {"options": MasaCtrlOptions(start_step=0)},
        "pnp": {"options": PnPOptions(negative_prompt="")},
        "blended": {"options": BlendedOptions(start=0.0, noise="inversion"), "mask": m},
        "sdedit": {},
        "diffedit": {"options": DiffEditOptions(noises=2)},
    }[method]
    return inv, inv_opts, method, inputs


class _Probabilities:
    """Observes the attention probabilities the controlled processors materialise (bench-only
    instrumentation: a wrapper around ``ControlledAttnProcessor._probs``, removed with the process).

    Per UNet call: with gradients, every self-attention probability tensor is kept for the backward
    pass, so the call holds their sum; without, one site's at a time, with its scores beside it (x2).
    ``peak_gib`` is the largest over the calls: the part of the work that grows with P^2."""

    def __init__(self, bundle, checkpointing: bool):
        # with gradient checkpointing a block's probabilities are kept only while that block is
        # recomputed in the backward pass: one site at a time, as without gradients
        self.bundle, self.calls, self.checkpointing = bundle, {}, checkpointing

    def record(self, site, probs):
        if site.kind != "self":
            return
        nbytes = probs.numel() * probs.element_size()
        key = self.bundle.unet_calls
        import torch

        grad, total, top = self.calls.get(key, (torch.is_grad_enabled() and not self.checkpointing, 0, 0))
        self.calls[key] = (grad, total + nbytes, max(top, nbytes))

    def peak_gib(self) -> float:
        return max([(t if g else 2 * m) / 2**30 for g, t, m in self.calls.values()], default=0.0)


def _observe_probabilities(bundle, checkpointing: bool) -> _Probabilities:
    from locedit.attention.control import ControlledAttnProcessor

    seen = _Probabilities(bundle, checkpointing)
    inner = ControlledAttnProcessor._probs

    def probs(self, attn, query, key, attention_mask, batch):
        out = inner(self, attn, query, key, attention_mask, batch)
        seen.record(self.site, out)
        return out

    ControlledAttnProcessor._probs = probs
    return seen


def one(folder: Path, row: str, size: int, device: str, dtype: str, steps: int = 5) -> dict:
    """Run one row at one size in this process and return its figures."""
    import torch

    from locedit import pipeline
    from locedit.diffusion import load_model

    sys.path.insert(0, str(ROOT / "bench" / "peers" / "drivers"))
    from measure import reset_peak_rss, rss_gib, touch

    torch.manual_seed(0)
    b = load_model(str(folder), device, dtype)
    # the same networks at a smaller native size: the methods take images and masks at the model's size
    b.unet.register_to_config(sample_size=size // 8)
    quad = _observe_probabilities(b, checkpointing=row.endswith("+ckpt"))
    touch(b.unet, b.vae, b.text_encoder, b.text_encoder_2)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    inv, inv_opts, method, inputs = _request(row, size)
    cuda = b.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**30
    else:
        base = rss_gib()
        reset_peak_rss()
    t0 = time.perf_counter()
    ckpt = row.endswith("+ckpt")
    with b.checkpointing(ckpt):
        if inv is None:
            res = pipeline.edit(b, image, SRC, TGT, method=method, num_steps=steps, **inputs)
        else:
            traj = pipeline.invert(b, image, SRC, inv, num_steps=steps, options=inv_opts)
            res = pipeline.edit(b, None, SRC, TGT, method=method, trajectory=traj, **inputs)
    assert torch.isfinite(res.edited).all()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        from measure import _status_gib

        peak = _status_gib("VmHWM")
    return {"row": row, "size": size, "device": device, "dtype": dtype, "steps": steps, "base_gib": base,
            "peak_gib": peak, "work_gib": peak - base, "seconds": time.perf_counter() - t0,
            "unet_calls": b.unet_calls, "quad_gib": quad.peak_gib()}


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (a, b) of work = a + b P."""
    import numpy as np

    P = np.array([p for p, _ in points], dtype=float)
    y = np.array([w for _, w in points], dtype=float)
    coef, *_ = np.linalg.lstsq(np.stack([np.ones_like(P), P], 1), y, rcond=None)
    return float(coef[0]), float(coef[1])


def weights_gib(folder: Path) -> dict:
    """Parameter bytes at fp16 (UNet, text encoders) and float32 (VAE), from the saved folder."""
    from safetensors import safe_open

    out = {}
    for comp in ("unet", "text_encoder", "text_encoder_2", "vae"):
        n = 0
        for f in (folder / comp).glob("*.safetensors"):
            with safe_open(str(f), "pt") as sf:
                n += sum(math.prod(sf.get_slice(k).get_shape()) for k in sf.keys())
        out[comp] = n * (4 if comp == "vae" else 2) / 2**30
    return out


def extrapolate(mine: list[dict], side: int = 1024) -> tuple[float, float, float, float]:
    """(a, b, quad at ``side``, work at ``side``) from a row's measured sizes: the observed
    probability part scales with P^2 (the 4th power of the side), the rest is fitted as a + b P."""
    pts = [((r["size"] // 8) ** 2, r["work_gib"] - r["quad_gib"]) for r in mine]
    a, b = fit(pts) if len(pts) >= 2 else (0.0, pts[0][1] / pts[0][0])
    big = mine[-1]
    quad = big["quad_gib"] * (side / big["size"]) ** 4
    P = (side // 8) ** 2
    return a, b, quad, max(a, 0.0) + b * P + quad


def table(rows_path: Path, folder: Path) -> str:
    rows = [r for r in map(json.loads, rows_path.read_text().splitlines()) if r.get("steps") == 5]
    w = weights_gib(folder)
    total_w = sum(w.values())
    lines = [f"Weights at fp16 (UNet {w['unet']:.2f} GiB, text encoders {w['text_encoder'] + w['text_encoder_2']:.2f} "
             f"GiB; the VAE in float32 {w['vae']:.2f} GiB): {total_w:.2f} GiB.", "",
             "| row | measured work GiB by size (of which P^2) | fit: a + b P | P^2 part at 1024 px | "
             "work at 1024 px | total at 1024 px fp16 | within 24 GB |",
             "|---|---|---|---:|---:|---:|---|"]
    for row in ROWS:
        mine = sorted((r for r in rows if r["row"] == row), key=lambda r: r["size"])
        if not mine:
            continue
        a, b_, quad, at = extrapolate(mine)
        measured = ", ".join(f"{r['size']} px: {r['work_gib']:.2f} ({r['quad_gib']:.3f})" for r in mine)
        total = at + total_w
        lines.append(f"| {row} | {measured} | {a:.2f} + {b_ * 1e3:.3f}e-3 P | {quad:.1f} | {at:.1f} | {total:.1f} | "
                     f"{'yes' if total <= 24 * 1e9 / 2**30 else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["build", "run", "one", "table"])
    p.add_argument("--folder", type=Path, default=WORK / "sdxl-random")
    p.add_argument("--rows", default="all", help=f"comma-separated rows of {', '.join(ROWS)} (default all)")
    p.add_argument("--sizes", default="256,384", help="image sides in px, multiples of 64 (default 256,384, as docs/sdxl.md)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--out", type=Path, default=WORK / "rows.jsonl", help="figures, one JSON line per (row, size)")
    args = p.parse_args(argv)
    if args.command == "build":
        build(args.folder)
        return 0
    rows = list(ROWS) if args.rows == "all" else args.rows.split(",")
    for r in rows:
        if r not in ROWS:
            p.error(f"unknown row {r!r}")
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s % 64 for s in sizes):
        p.error("sizes must be multiples of 64")
    if args.command == "one":
        print(json.dumps(one(args.folder, rows[0], sizes[0], args.device, args.dtype)))
        return 0
    if args.command == "table":
        print(table(args.out, args.folder))
        return 0
    if not args.folder.is_dir():
        p.error(f"{args.folder} does not exist: run `python bench/sdxl_memory.py build` first")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.is_file():
        done = {(d["row"], d["size"], d["device"], d["steps"]) for d in map(json.loads, args.out.read_text().splitlines())}
    for size in sizes:
        for row in rows:
            if (row, size, args.device, 5) in done:
                continue
            # large blocks straight from mmap and back on free: the peak RSS then follows the live tensors
            # instead of what glibc's arenas keep cached
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", MALLOC_TRIM_THRESHOLD_="0", MALLOC_ARENA_MAX="2")
            r = subprocess.run([sys.executable, __file__, "one", "--folder", str(args.folder), "--rows", row,
                                "--sizes", str(size), "--device", args.device, "--dtype", args.dtype],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                print(f"{row} @ {size}: failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
                continue
            line = r.stdout.strip().splitlines()[-1]
            with args.out.open("a") as f:
                f.write(line + "\n")
            d = json.loads(line)
            print(f"{row} @ {size}px: work {d['work_gib']:.2f} GiB, {d['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
