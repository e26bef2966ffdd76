"""Inversions that are DDIM inversion plus an editing-side rule, with no optimisation.

- Negative-prompt inversion (Miyake et al., 2023): the source prompt's embedding replaces the
  null embedding in the unconditional rows during editing; approximates NTI's solution for free.
- Direct inversion (Ju et al., "PnP Inversion", ICLR 2024): the editing loop records, at each
  step, the difference between the inversion latent and the source branch's denoised latent and
  adds it back to the source branch, which therefore reconstructs exactly; the target branch is
  left alone. The difference is computed in the loop (it needs the editing CFG scale and costs no
  UNet call), so the trajectory only flags ``source_follows``.
"""

from __future__ import annotations

import torch

from ..diffusion import ModelBundle
from ..progress import Progress
from .ddim import ddim_latents
from .options import DirectInversionOptions, NegativePromptOptions  # noqa: F401 (re-exported)
from .trajectory import Trajectory


def negative_prompt_inversion(bundle: ModelBundle, z0: torch.Tensor, prompt: str, num_steps: int, guidance: float,
                              options: NegativePromptOptions = NegativePromptOptions(),
                              progress: Progress | None = None) -> Trajectory:
    cond = bundle.encode_text([prompt])
    latents = ddim_latents(bundle, z0, cond, num_steps, progress, "npi (ddim) inversion")
    return Trajectory("npi", prompt, num_steps, guidance, latents, uncond="source")


def direct_inversion(bundle: ModelBundle, z0: torch.Tensor, prompt: str, num_steps: int, guidance: float,
                     options: DirectInversionOptions = DirectInversionOptions(),
                     progress: Progress | None = None) -> Trajectory:
    cond = bundle.encode_text([prompt])
    latents = ddim_latents(bundle, z0, cond, num_steps, progress, "direct (ddim) inversion")
    return Trajectory("direct", prompt, num_steps, guidance, latents, uncond="null", source_follows=True)
