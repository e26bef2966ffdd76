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
from .edits import EDIT_KINDS, sample_edit
from .oracle import change_seen, read_scene
from .scene import render, sample_scene
from .data import HELD_OUT_SEED, to_tensor

GATES = {"vae_psnr": 30.0, "t2i_oracle": 0.80, "nti_psnr": 28.0, "instruct_oracle": 0.70, "instruct_outside_psnr": 25.0,
         "p2p_colour_oracle": 0.80, "p2p_colour_outside_psnr": 25.0, "p2p_shape_oracle": 0.60,
         "f1_oracle": 0.80,  # F1: shapes-flow text-to-image (locedit.world.train_flow.gate_flow_t2i)
         "f2_inversion_psnr": 30.0,  # F2: its Euler inversion then sampling (gate_flow_inversion)
         "f3_flowedit_oracle": 0.80, "f3_flowedit_outside_psnr": 25.0,  # F3: FlowEdit colour edits
         "f4_kv_edit_oracle": 0.80, "f4_kv_edit_outside_psnr": 30.0,  # F4: KV-Edit with the object's mask
         "f5_blend_words_oracle": 0.80, "f5_blend_words_outside_psnr": 27.0}  # F5: FlowEdit in the blend-words mask


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


def oracle_counts(scenes, images: torch.Tensor) -> tuple[int, int, int]:
    """How many of ``images`` (B, 3, H, W) in [0, 1] the oracle reads as their ``scenes``: (objects
    right, objects and textures right, background right)."""
    objects = textures = backgrounds = 0
    for s, img in zip(scenes, images):
        r = read_scene(_to_uint8(img[None]))
        objects += r.matches(s, texture=False, background=False)
        textures += r.matches(s, texture=True, background=False)
        backgrounds += r.background == s.background
    return objects, textures, backgrounds


def gate_t2i(bundle: ModelBundle, n: int = 200, steps: int = 50, guidance: float = 7.5, seed: int = 0,
             batch: int = 25, progress=None) -> dict:
    scenes = held_out_scenes(n, offset=10_000)
    g = torch.Generator().manual_seed(seed)
    objects = textures = backgrounds = 0
    chunks = [scenes[i : i + batch] for i in range(0, n, batch)]
    for chunk in (chunks if progress is None else progress(chunks, "t2i gate")):
        imgs = bundle.decode_latents(pipeline.generate(bundle, [s.caption() for s in chunk], steps, guidance, g))
        counts = oracle_counts(chunk, imgs)
        objects, textures, backgrounds = objects + counts[0], textures + counts[1], backgrounds + counts[2]
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
    full, rows = 0, []
    size = bundle.image_size
    for e in (edits if progress is None else progress(edits, "instruct gate")):
        src = to_tensor([e.render_source(size)]).to(bundle.device)
        out = bundle.decode_latents(instruct_edit(bundle, src, e.instruction, steps, options, g))
        reading = read_scene(_to_uint8(out))
        full += reading.matches(e.target)
        keep = torch.from_numpy(~e.mask(size))
        rows.append((e.kind, change_seen(reading, e), psnr(out.cpu(), src.cpu(), keep)))
    figures = {"instruct_oracle": sum(ok for _, ok, _ in rows) / n, "instruct_full_scene": full / n,
               "instruct_outside_psnr": float(np.mean([v for _, _, v in rows])), "n": n}
    for kind in EDIT_KINDS:  # the same figures by edit kind (information, not gates)
        mine = [(ok, v) for k, ok, v in rows if k == kind]
        if mine:
            figures[f"instruct_oracle_{kind}"] = sum(ok for ok, _ in mine) / len(mine)
            figures[f"instruct_outside_psnr_{kind}"] = float(np.mean([v for _, v in mine]))
    return figures


def _p2p_gate(bundle: ModelBundle, kind: str, offset: int, n: int, steps: int, use_mask: bool, mode: str,
              progress=None) -> list[tuple[bool, float]]:
    """(oracle sees the edit, PSNR outside the edited object) for ``n`` held-out edits of ``kind``,
    edited with P2P (``mode``) after direct inversion, blended by the edited object's shape word's
    attention (``use_mask`` False) or by its exact mask."""
    from ..control import P2POptions
    from ..methods import P2PEditOptions

    rng = random.Random(HELD_OUT_SEED + offset)
    edits = [sample_edit(rng, kind) for _ in range(n)]
    size = bundle.image_size
    out = []
    for e in (edits if progress is None else progress(edits, f"p2p {kind} gate")):
        src = to_tensor([e.render_source(size)]).to(bundle.device)
        keep = ~e.mask(size)
        kwargs = ({"mask": torch.from_numpy((~keep).astype(np.float32))[None, None].to(bundle.device)} if use_mask
                  else {"blend_words": e.words()[0]})
        res = pipeline.edit(bundle, src, e.source_caption, e.target_caption, method="p2p",
                            options=P2PEditOptions(P2POptions(mode=mode)), inversion="direct", num_steps=steps,
                            **kwargs)
        edited = res.edited.float().cpu()
        out.append((change_seen(read_scene(_to_uint8(edited)), e), psnr(edited, src.cpu(), torch.from_numpy(keep))))
    return out


def gate_p2p_colour(bundle: ModelBundle, n: int = 100, steps: int = 50, progress=None) -> dict:
    """Gate 5: colour edits by P2P word swap with the attention local blend (blend words = the edited
    object's shape word in both prompts; no user mask), after direct inversion."""
    rows = _p2p_gate(bundle, "colour", 40_000, n, steps, use_mask=False, mode="replace", progress=progress)
    return {"p2p_colour_oracle": sum(ok for ok, _ in rows) / n,
            "p2p_colour_outside_psnr": float(np.mean([v for _, v in rows])), "n": n}


def gate_p2p_shape(bundle: ModelBundle, n: int = 100, steps: int = 50, progress=None) -> dict:
    """Gate 6: shape edits (circle -> triangle, ...) by P2P refine with the edited object's exact mask
    as the blend, after direct inversion."""
    rows = _p2p_gate(bundle, "shape", 50_000, n, steps, use_mask=True, mode="refine", progress=progress)
    return {"p2p_shape_oracle": sum(ok for ok, _ in rows) / n,
            "p2p_shape_outside_psnr": float(np.mean([v for _, v in rows])), "n": n}
