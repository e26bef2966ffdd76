"""AIDI's fixed-point inversion (Pan et al., Effective Real Image Editing with Accelerated Iterative
Diffusion Inversion, ICCV 2023), as SPDInv describes it (Li et al., ECCV 2024, Sec. 3.2): each
inversion step solves z_t = f(z_t), f(x) = C_t1 z_{t-1} + C_t2 eps(x, t, c) (SPDInv's Eq. 3: the DDIM
inverse step with eps at x), by "fixed-round iterations assigning f(z_t) to z_t", from the DDIM step.

Neither AIDI's paper nor its code is at hand (the paper is not in ``shared/papers``; no code was
released): ``rounds`` = 5 is locedit's choice, and AIDI's acceleration (Anderson mixing) and its
"blended guidance" at editing time are not built. The per-step residual ||f(z) - z|| of the DDIM
start and of the last round are kept in ``stats``, as for SPDInv.
"""

from __future__ import annotations

import torch

from ..diffusion import ModelBundle
from ..progress import Progress, track
from .options import AIDIOptions
from .trajectory import Trajectory


@torch.no_grad()
def aidi_inversion(bundle: ModelBundle, z0: torch.Tensor, prompt: str, num_steps: int, guidance: float,
                   options: AIDIOptions = AIDIOptions(), progress: Progress | None = None) -> Trajectory:
    cond = bundle.encode_text([prompt])
    sampler = bundle.sampler
    latents = [z0.float()]
    start, end = [], []
    for s in track(progress, sampler.schedule(num_steps)[::-1], "aidi inversion"):
        back = sampler.reverse(s)  # the inversion move that undoes sampling step s
        land = sampler.landing(back)
        z_prev = latents[-1]
        x = sampler.step(z_prev, bundle.predict(z_prev, back, cond), back)
        for k in range(options.rounds):
            fx = sampler.step(z_prev, bundle.predict(x, land, cond), back)
            if k == 0:
                start.append(float((fx - x).flatten().norm()))
            if k == options.rounds - 1:
                end.append(float((fx - x).flatten().norm()))
            x = fx
        latents.append(x)
    return Trajectory("aidi", prompt, num_steps, guidance, latents, uncond="null",
                      stats={"residual_ddim": start, "residual": end})
