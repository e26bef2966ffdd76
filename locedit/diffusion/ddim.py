"""DDIM step math as pure functions, and the discrete schedule they walk.

Song et al., "Denoising Diffusion Implicit Models" (ICLR 2021), Eq. 12 with sigma = 0:

    z_to = sqrt(a_to) * x0 + sqrt(1 - a_to) * eps,   x0 = (z_from - sqrt(1 - a_from) * eps) / sqrt(a_from)

The same function serves sampling (a_from < a_to, towards the image) and inversion
(a_from > a_to, towards noise): DDIM inversion is this step with the roles of the two alphas
swapped, evaluated with eps predicted at the *less* noisy latent (Mokady et al., CVPR 2023).
Both are verified against diffusers' ``DDIMScheduler.step`` and ``DDIMInverseScheduler.step``
in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def ddim_step(z: torch.Tensor, eps: torch.Tensor, alpha_from, alpha_to) -> torch.Tensor:
    """Deterministic DDIM move of ``z`` from cumulative alpha ``alpha_from`` to ``alpha_to``.

    ``alpha_*`` are abar (cumulative products), scalars or tensors broadcastable to ``z``.
    """
    alpha_from = torch.as_tensor(alpha_from, dtype=z.dtype, device=z.device)
    alpha_to = torch.as_tensor(alpha_to, dtype=z.dtype, device=z.device)
    x0 = (z - (1 - alpha_from).sqrt() * eps) / alpha_from.sqrt()
    return alpha_to.sqrt() * x0 + (1 - alpha_to).sqrt() * eps


def add_noise(z0: torch.Tensor, noise: torch.Tensor, alpha) -> torch.Tensor:
    """The forward process q(z_t | z_0) at cumulative alpha ``alpha``: sqrt(a) z0 + sqrt(1 - a) noise
    (Ho et al., 2020, Eq. 4; diffusers' ``DDPMScheduler.add_noise``)."""
    alpha = torch.as_tensor(alpha, dtype=z0.dtype, device=z0.device)
    return alpha.sqrt() * z0 + (1 - alpha).sqrt() * noise


def predicted_x0(z: torch.Tensor, eps: torch.Tensor, alpha) -> torch.Tensor:
    """x0 implied by (z, eps) at cumulative alpha ``alpha`` (DDIM Eq. 12, first term)."""
    alpha = torch.as_tensor(alpha, dtype=z.dtype, device=z.device)
    return (z - (1 - alpha).sqrt() * eps) / alpha.sqrt()


def to_epsilon(model_output: torch.Tensor, z: torch.Tensor, alpha, prediction_type: str) -> torch.Tensor:
    """Convert a model output to the noise prediction eps.

    epsilon: as is. v_prediction (Salimans & Ho 2022): eps = sqrt(a) v + sqrt(1 - a) z.
    sample: eps = (z - sqrt(a) x0) / sqrt(1 - a). The conversion is linear in the output, so
    classifier-free guidance may be applied before or after it with the same result.
    """
    if prediction_type == "epsilon":
        return model_output
    alpha = torch.as_tensor(alpha, dtype=z.dtype, device=z.device)
    if prediction_type == "v_prediction":
        return alpha.sqrt() * model_output + (1 - alpha).sqrt() * z
    if prediction_type == "sample":
        return (z - alpha.sqrt() * model_output) / (1 - alpha).sqrt()
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


@dataclass(frozen=True)
class DDIMSchedule:
    """The discrete timesteps of an N-step DDIM run and their cumulative alphas.

    Sampling step ``i`` (0-based, i = 0 is the noisiest) evaluates the model at ``timesteps[i]``
    and moves from ``alphas[i]`` to ``alphas_next[i]``. Inversion step ``j`` is sampling step
    ``N - 1 - j`` backwards: it moves from ``alphas_next[N-1-j]`` to ``alphas[N-1-j]`` with the
    model evaluated at ``timesteps[N-1-j]``. Matches diffusers' DDIMScheduler /
    DDIMInverseScheduler ("leading" and "trailing" spacing, ``steps_offset``,
    ``set_alpha_to_one``).
    """

    timesteps: tuple[int, ...]
    alphas: tuple[float, ...]
    alphas_next: tuple[float, ...]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @classmethod
    def from_config(cls, config: dict, num_steps: int) -> "DDIMSchedule":
        """Build from a diffusers scheduler config (any scheduler with DDPM-style betas)."""
        from diffusers import DDIMScheduler

        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        sched = DDIMScheduler.from_config(dict(config))
        total = sched.config.num_train_timesteps
        spacing = sched.config.timestep_spacing
        if spacing not in ("leading", "trailing"):
            raise ValueError(f"timestep_spacing {spacing!r} is not supported (use leading or trailing)")

        def timesteps(n: int) -> list[int]:
            if spacing == "leading":
                return [k * (total // n) + sched.config.steps_offset for k in range(n)][::-1]
            return [int(round(total - k * total / n)) - 1 for k in range(n)]

        if num_steps > total or max(timesteps(num_steps)) >= total:
            most = next(n for n in range(min(num_steps, total), 0, -1) if max(timesteps(n)) < total)
            raise ValueError(f"num_steps must be between 1 and {most} for this scheduler "
                             f"({total} training steps), got {num_steps}")
        ts = timesteps(num_steps)
        acp = sched.alphas_cumprod.double()
        final = 1.0 if sched.config.set_alpha_to_one else float(acp[0])
        # diffusers' DDIMScheduler steps to t - total // num_steps for every spacing
        step = total // num_steps
        alphas = tuple(float(acp[t]) for t in ts)
        nxt = tuple(float(acp[t - step]) if t - step >= 0 else final for t in ts)
        return cls(tuple(int(t) for t in ts), alphas, nxt)
