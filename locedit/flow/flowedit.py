"""FlowEdit (Kulikov et al., "FlowEdit: Inversion-Free Text-Based Editing Using Pre-Trained Flow
Models", ICCV 2025): an ODE from the source image straight to the edit, no inversion.

Alg. 1 (the authors' code, fallenshock/FlowEdit, ``FlowEdit_utils.py``: ``FlowEditSD3``,
``FlowEditFLUX``): Z^FE starts at the source latent X_src. For the steps from ``n_max`` steps before
the end down to ``n_min`` before it, at level t_i:

    Z_src = (1 - t_i) X_src + t_i N,    N ~ N(0, I), a fresh draw (``n_avg`` draws averaged)
    Z_tar = Z^FE + Z_src - X_src
    V_delta = V(Z_tar, t_i, c_tar, s_tar) - V(Z_src, t_i, c_src, s_src)
    Z^FE <- Z^FE + (t_{i-1} - t_i) V_delta

then, for the last ``n_min`` steps, plain sampling of the target from Z^FE + (noised X_src) - X_src
(SDEdit-style). With identical prompts and scales V_delta is 0 and the source comes back exactly
(tested). Guidance: SD3 takes classifier-free guidance per branch against the empty prompt in one
batched call of four rows, [src uncond, src cond, tar uncond, tar cond] (``calc_v_sd3``); FLUX
takes the scales as its distilled guidance, one call per branch (``calc_v_flux``).

Defaults: the paper's and the code's experiment files (``SD3_exp.yaml``, ``FLUX_exp.yaml``; the same
values): SD3 50 steps, n_max 33, n_min 0, n_avg 1, scales 3.5 / 13.5; FLUX 28 steps, n_max 24,
n_min 0, n_avg 1, scales 1.5 / 5.5. Levels: SD3's loop divides the scheduler's timesteps by 1000
(t / 1000), FLUX's reads the scheduler's sigmas; both are kept. Noise: the code draws
``torch.randn_like`` from the global generator in the latent's layout (FLUX's packed tokens); here a
CPU generator seeded with ``seed`` draws in the same layout and order, so the code run after
``torch.manual_seed(seed)`` draws the same numbers. Differences from the code: its ``n_min`` branch
for SD3 casts with an undefined name (a plain bug, not reproduced: the step is the FLUX branch's).
"""

from __future__ import annotations

import torch

from ..diffusion import flow
from ..diffusion.cfg import cfg
from .options import FlowEditOptions






def _levels(bundle, steps: int, h: int, w: int) -> list[float]:
    """The loop's levels t_0 > ... > t_{T-1} and a final 0: SD3's code divides the scheduler's
    timesteps by 1000, FLUX's reads its sigmas."""
    sigmas = bundle.sigmas(steps, h, w)
    if bundle.family == "sd3":
        t = flow.timesteps(sigmas, bundle.scheduler_config) / 1000
        return t.tolist() + [0.0]
    return sigmas.tolist()


def _noise(shape, family: str, gen: torch.Generator) -> torch.Tensor:
    """One draw in the code's layout (FLUX: packed tokens), returned as (B, C, h, w)."""
    b, c, h, w = shape
    if family == "flux":
        return flow.unpack(torch.randn((b, (h // 2) * (w // 2), 4 * c), generator=gen), h, w)
    return torch.randn(shape, generator=gen)


def _velocities(bundle, z_src, z_tar, t, texts, options):
    """(V_src, V_tar) at level ``t``: SD3 one call of four rows with CFG per branch, FLUX two calls."""
    if bundle.family == "sd3":
        v = bundle.velocity(torch.cat([z_src, z_src, z_tar, z_tar]), t, texts["sd3"])
        su, sc, tu, tc = v.chunk(4)
        return cfg(su, sc, options.src_guidance), cfg(tu, tc, options.tar_guidance)
    return (bundle.velocity(z_src, t, texts["src"], options.src_guidance),
            bundle.velocity(z_tar, t, texts["tar"], options.tar_guidance))


def _texts(bundle, source: str, target: str) -> dict:
    src, tar = bundle.encode_text([source]), bundle.encode_text([target])
    if bundle.family != "sd3":
        return {"src": src, "tar": tar}
    empty = bundle.encode_text([""])
    return {"sd3": flow_text_rows([empty, src, empty, tar])}


def flow_text_rows(texts):
    """Prompt encodings stacked as batch rows."""
    from ..diffusion.flow_model import FlowText

    return FlowText(torch.cat([t.states for t in texts]), torch.cat([t.pooled for t in texts]),
                    texts[0].ids)


@torch.no_grad()
def flowedit(bundle, x_src: torch.Tensor, source: str, target: str, options: FlowEditOptions = FlowEditOptions(),
             seed: int = 0, progress=None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Edit the source latent ``x_src`` (1, C, h, w) from ``source`` towards ``target`` (Alg. 1);
    returns the edited latent. ``mask`` (1, 1, h, w) in [0, 1] at the latent's size localises it
    (locedit's addition, in neither the paper nor the code): after every step the edit ODE is
    X_src + M (Z^FE - X_src), and the n_min phase keeps the source noised to the step's level
    outside M, so the outside ends on the source latent."""
    from ..progress import track

    o = options.resolved(bundle.family)
    _, _, h, w = x_src.shape
    t = _levels(bundle, o.steps, h, w)
    texts = _texts(bundle, source, target)
    gen = torch.Generator().manual_seed(seed)
    x_src = x_src.to(bundle.device, bundle.dtype)
    z_fe, x_tar = x_src.clone(), None
    m = None if mask is None else mask.to(x_src.device, x_src.dtype)
    first = o.steps - o.n_max
    for i in track(progress, range(first, o.steps), "flowedit"):
        if o.steps - i > o.n_min:
            delta = torch.zeros_like(x_src)
            for _ in range(o.n_avg):
                n = _noise(x_src.shape, bundle.family, gen).to(x_src)
                z_src = (1 - t[i]) * x_src + t[i] * n
                z_tar = z_fe + z_src - x_src
                v_src, v_tar = _velocities(bundle, z_src, z_tar, t[i], texts, o)
                delta = delta + (1 / o.n_avg) * (v_tar - v_src)
            z_fe = (z_fe.float() + (t[i + 1] - t[i]) * delta.float()).to(delta.dtype)
            if m is not None:
                z_fe = x_src + m * (z_fe - x_src)
            continue
        if x_tar is None:  # the last n_min steps: sample the target, started SDEdit-style
            n = _noise(x_src.shape, bundle.family, gen).to(x_src)
            x_tar = z_fe + flow.noised(x_src, n, t[i]) - x_src
        _, v_tar = _velocities(bundle, x_tar, x_tar, t[i], texts, o)
        x_tar = flow.euler_step(x_tar, v_tar, t[i], t[i + 1])
        if m is not None:  # the outside on the source's straight path, at the level just reached
            x_tar = flow.noised(x_src, n, t[i + 1]) + m * (x_tar - flow.noised(x_src, n, t[i + 1]))
    return z_fe if x_tar is None else x_tar
