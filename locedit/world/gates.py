"""The shapes models' quality gates, as functions (the full measurement is bench/shapes_gates.py).

Every gate draws held-out scenes (seeds from HELD_OUT_SEED up, never used in training) and
returns a dict of figures; the thresholds live in GATES.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from .. import pipeline
from ..diffusion import ModelBundle
from ..instruct import IP2POptions, instruct_edit
from .edits import sample_edit
from .oracle import change_seen, read_scene
from .scene import render, sample_scene
from .train import HELD_OUT_SEED, to_tensor

GATES = {"vae_psnr": 30.0, "t2i_oracle": 0.80, "nti_psnr": 28.0, "instruct_oracle": 0.70, "instruct_outside_psnr": 25.0}


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of images in [0, 1]; ``mask`` (H, W) bool restricts the pixels compared."""
    d = (a.float() - b.float()) ** 2
    if mask is not None:
        d = d[..., mask]
    mse = d.mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def held_out_scenes(n: int, offset: int = 0):
    return [sample_scene(random.Random(HELD_OUT_SEED + offset + k)) for k in range(n)]


def gate_vae(bundle: ModelBundle, n: int = 200) -> dict:
    scenes = held_out_scenes(n)
    size = bundle.image_size
    values = []
    for s in scenes:
        x = to_tensor([render(s, size)[0]]).to(bundle.device)
        values.append(psnr(bundle.decode_latents(bundle.encode_image(x)), x))
    return {"vae_psnr": float(np.mean(values)), "n": n}


def gate_t2i(bundle: ModelBundle, n: int = 200, steps: int = 50, guidance: float = 7.5, seed: int = 0,
             batch: int = 25, progress=None) -> dict:
    scenes = held_out_scenes(n, offset=10_000)
    g = torch.Generator().manual_seed(seed)
    objects = textures = backgrounds = 0
    chunks = [scenes[i : i + batch] for i in range(0, n, batch)]
    for chunk in (chunks if progress is None else progress(chunks, "t2i gate")):
        imgs = bundle.decode_latents(pipeline.generate(bundle, [s.caption() for s in chunk], steps, guidance, g))
        for s, img in zip(chunk, imgs):
            r = read_scene(_to_uint8(img[None]))
            objects += r.matches(s, texture=False, background=False)
            textures += r.matches(s, texture=True, background=False)
            backgrounds += r.background == s.background
    return {"t2i_oracle": objects / n, "t2i_oracle_with_texture": textures / n, "t2i_background": backgrounds / n, "n": n}


def gate_nti(bundle: ModelBundle, n: int = 200, steps: int = 50, guidance: float = 7.5, progress=None) -> dict:
    scenes = held_out_scenes(n, offset=20_000)
    values = []
    for s in (scenes if progress is None else progress(scenes, "nti gate")):
        x = to_tensor([render(s, bundle.image_size)[0]]).to(bundle.device)
        traj = pipeline.invert(bundle, x, s.caption(), "null-text", steps, guidance)
        rec = pipeline.reconstruct(bundle, traj, pipeline.EditOptions(guidance=guidance))
        values.append(psnr(bundle.decode_latents(rec.latents), x))
    return {"nti_psnr": float(np.mean(values)), "n": n}


def gate_instruct(bundle: ModelBundle, n: int = 200, steps: int = 50, options: IP2POptions = IP2POptions(),
                  seed: int = 0, progress=None) -> dict:
    rng = random.Random(HELD_OUT_SEED + 30_000)
    edits = [sample_edit(rng) for _ in range(n)]
    g = torch.Generator().manual_seed(seed)
    ok, full, outside = 0, 0, []
    size = bundle.image_size
    for e in (edits if progress is None else progress(edits, "instruct gate")):
        src = to_tensor([e.render_source(size)]).to(bundle.device)
        out = bundle.decode_latents(instruct_edit(bundle, src, e.instruction, steps, options, g))
        reading = read_scene(_to_uint8(out))
        ok += change_seen(reading, e)
        full += reading.matches(e.target)
        keep = torch.from_numpy(~e.mask(size))
        outside.append(psnr(out.cpu(), src.cpu(), keep))
    return {"instruct_oracle": ok / n, "instruct_full_scene": full / n,
            "instruct_outside_psnr": float(np.mean(outside)), "n": n}
