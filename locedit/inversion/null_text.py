"""Null-text inversion (Mokady et al., "Null-text Inversion for Editing Real Images", CVPR 2023, Alg. 1).

Pivot: the conditional DDIM inversion trajectory z*_0..z*_N. Then, for sampling step i, starting
from z_N = z*_N, optimise the unconditional embedding so that one classifier-free-guided DDIM step
from the current latent lands on the pivot:

    min_null || z*_{t-1} - DDIM(z_t, eps_u(null) + w (eps_c - eps_u(null))) ||^2

Adam with lr 1e-2 * (1 - i/100), at most ``inner_steps`` (10) iterations, early stop when the
loss drops below 1e-5 + i * 2e-5; the embedding carries over to the next step. The conditional
eps is computed once per step (it does not depend on the null embedding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion import ModelBundle
from ..diffusion.cfg import cfg
from ..diffusion.sampler import Step
from ..errors import OptimisationError
from ..progress import Progress, track
from .ddim import ddim_latents
from .options import NullTextOptions  # noqa: F401 (re-exported)
from .trajectory import Trajectory


def optimise_null(bundle: ModelBundle, z: torch.Tensor, target: torch.Tensor, cond_eps: torch.Tensor,
                  null: torch.Tensor, move: Step, guidance: float, lr: float, inner_steps: int, threshold: float,
                  step: int) -> torch.Tensor:
    """One step of Alg. 1 at sampling step ``move``: returns the optimised null embedding (detached)."""
    sampler = bundle.sampler
    param = null.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)
    for _ in range(inner_steps):
        eps_u = bundle.predict(z, move, param)
        loss = F.mse_loss(sampler.step(z, cfg(eps_u, cond_eps, guidance), move), target)
        if not torch.isfinite(loss):
            raise OptimisationError(f"null-text inversion: loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < threshold:
            break
    return param.detach()


def null_text_inversion(bundle: ModelBundle, z0: torch.Tensor, prompt: str, num_steps: int, guidance: float,
                        options: NullTextOptions = NullTextOptions(), progress: Progress | None = None) -> Trajectory:
    cond, null = bundle.encode_text([prompt, ""]).split(1)
    latents = ddim_latents(bundle, z0, cond, num_steps, progress, "null-text: ddim inversion")
    sampler = bundle.sampler
    nulls: list[torch.Tensor] = []
    z = latents[-1]
    for s in track(progress, sampler.schedule(num_steps), "null-text"):
        i = s.index
        with torch.no_grad():
            cond_eps = bundle.predict(z, s, cond)
        null = optimise_null(
            bundle, z, latents[num_steps - i - 1], cond_eps, null, s, guidance,
            lr=options.lr * (1 - options.lr_decay * i), inner_steps=options.inner_steps,
            threshold=options.epsilon + i * options.epsilon_growth, step=i,
        )
        nulls.append(null)
        with torch.no_grad():
            z = sampler.step(z, cfg(bundle.predict(z, s, null), cond_eps, guidance), s)
    return Trajectory("null-text", prompt, num_steps, guidance, latents, uncond="learned", null_embeddings=nulls)
