"""DDIM inversion (Song et al. 2021; as used by Prompt-to-Prompt and null-text inversion).

Each step moves z from abar_{t-1} to abar_t with eps predicted at the less noisy latent, under
the source prompt only (guidance 1).
"""

from __future__ import annotations

import torch

from ..diffusion import ModelBundle
from ..progress import Progress, track
from .options import DDIMInversionOptions  # noqa: F401 (re-exported)
from .trajectory import Trajectory


@torch.no_grad()
def ddim_latents(bundle: ModelBundle, z0: torch.Tensor, cond: torch.Tensor, num_steps: int,
                 progress: Progress | None = None, desc: str = "ddim inversion") -> list[torch.Tensor]:
    """[z_0, z_1, ..., z_N]: conditional DDIM inversion of ``z0`` (1, C, h, w)."""
    sampler = bundle.sampler
    latents = [z0.float()]
    z = latents[0]
    for s in track(progress, sampler.schedule(num_steps)[::-1], desc):
        back = sampler.reverse(s)  # the inversion move that undoes sampling step s
        z = sampler.step(z, bundle.predict(z, back, cond), back)
        latents.append(z)
    return latents


def ddim_inversion(bundle: ModelBundle, z0: torch.Tensor, prompt: str, num_steps: int, guidance: float,
                   options: DDIMInversionOptions = DDIMInversionOptions(), progress: Progress | None = None) -> Trajectory:
    cond = bundle.encode_text([prompt])
    latents = ddim_latents(bundle, z0, cond, num_steps, progress)
    return Trajectory("ddim", prompt, num_steps, guidance, latents, uncond="null")
