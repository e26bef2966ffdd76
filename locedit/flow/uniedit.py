"""UniEdit-Flow (Jiao et al., "UniEdit-Flow: Unleashing Inversion and Editing in the Era of Flow
Models", 2025) on FLUX, as its authors' code runs it (DSL-Lab/UniEdit-Flow,
``UniEdit-Flow_FLUX/src/flux/sampling.py`` ``edit_uniedit``, ``edit.py`` with
``--sampling_strategy uniedit``):

- **Uni-Inv** (delayed): the empty prompt at distilled guidance 1, the predictor-corrector step
  (:func:`locedit.diffusion.flow.walk`, solver ``uni-inv``), over only the first k = round(alpha * N)
  steps from the image up (``zero_init``: the first predictor velocity is zero);
- **Uni-Edit**: from the level reached, the last k sampling steps, each with the target's and the
  source's velocities at ``guidance``: c = v_tar - v_src; a per-token map m = mean over the packed
  features of |c|, min-max normalised over the image's tokens; the fused velocity
  m v_tar + (1 - m) v_src plus (m + 1) omega c; an Euler step.

k + 1 + 2k model calls (28 at the defaults: 15 steps, alpha 0.6). Difference from the code: where the
two velocities agree on every token (identical prompts) its min-max normalisation divides 0 by 0
and the edit becomes NaN; here the map is 0 there, the limit (the fused velocity is then the
source's: a plain bug, not reproduced). ``solver`` (locedit's addition; default ``uni-inv``, the
code's): the delayed inversion by another of :func:`locedit.diffusion.flow.walk`'s solvers, the edit
unchanged (Euler k calls, RF-Solver 2k, FireFlow k + 1). ``mask`` (1, 1, h, w): locedit's
localisation, in neither paper nor code - after every editing step the outside is put back on
Uni-Inv's latent of the level reached, ending on the source latent.
"""

from __future__ import annotations

import torch

from ..diffusion import flow
from ..errors import LoceditError
from .options import UniEditOptions


def zero_init(velocity):
    """(velocity, clock) for :func:`locedit.diffusion.flow.walk` with Uni-Inv's ``zero_init``: the
    predictor's first velocity (step 0, stage "first") is zero, not the model's - no call is made."""
    now = {}

    def clock(i, stage):
        now["at"] = (i, stage)

    def zeroed(z, t):
        return torch.zeros_like(z) if now["at"] == (0, "first") else velocity(z, t)

    return zeroed, clock


@torch.no_grad()
def uniedit_flow(bundle, x_src: torch.Tensor, source: str, target: str, options: UniEditOptions = UniEditOptions(),
                 seed: int = 0, progress=None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The edited latent (1, C, h, w) of ``x_src`` on a FLUX model."""
    from ..progress import track

    if bundle.family != "flux":
        raise LoceditError(f"uniedit-flow runs on FLUX models (its code is FLUX's), not {bundle.family}")
    o = options
    _, _, h, w = x_src.shape
    x = x_src.to(bundle.device, bundle.dtype)
    levels = bundle.sigmas(o.steps, h, w).tolist()
    n = len(levels) - 1
    k = round(o.alpha * n)
    empty, src, tar = bundle.encode_text([""]), bundle.encode_text([source]), bundle.encode_text([target])
    up = levels[::-1][:k + 1]  # 0 up to the level the edit starts from
    path = {n: x}  # Uni-Inv's latents by level index
    ticks = iter(track(progress, range(2 * k), "uniedit-flow"))

    def keep(i, z):
        path[n - 1 - i] = z
        next(ticks, None)
        return z

    velocity, clock = lambda z, t: bundle.velocity(z, t, empty, 1.0), None
    if o.zero_init:
        velocity, clock = zero_init(velocity)
    z, _ = flow.walk(velocity, x, up, o.solver, clock=clock, after_step=keep)
    m = None if mask is None else mask.to(x)
    for i in range(n - k, n):
        t, t_next = levels[i], levels[i + 1]
        v_tar, v_src = bundle.velocity(z, t, tar, o.guidance), bundle.velocity(z, t, src, o.guidance)
        c = flow.pack(v_tar - v_src)
        r = c.abs().mean(dim=2, keepdim=True)
        spread = r.max() - r.min()
        r = (r - r.min()) / spread if spread > 0 else torch.zeros_like(r)  # the code divides 0 by 0 (not kept)
        fused = r * flow.pack(v_tar) + (1 - r) * flow.pack(v_src)
        pred = flow.unpack(fused + (r + 1) * o.omega * c, h, w)
        z = z + (t_next - t) * pred
        if m is not None:
            z = path[i + 1] + m * (z - path[i + 1])
        next(ticks, None)
    return z
