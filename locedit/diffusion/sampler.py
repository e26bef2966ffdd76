"""The sampler interface: a schedule of steps, the model's prediction in the sampler's terms, and the
step itself, as pure functions. The editing loop and every inversion walk a sampler's steps and
never name its quantities (cumulative alphas and noise for DDIM; sigmas and velocity for flow
matching, the next family).

A :class:`Step` is one move: the model is evaluated at timestep ``t`` on latents at level ``at``
and the move lands on level ``to``. Sampling step i (0 = noisiest) moves towards the image;
``sampler.reverse(step)`` is the inversion step that undoes it (towards noise). Tested against
diffusers' schedulers (``DDIMScheduler`` and ``DDIMInverseScheduler`` for :class:`DDIM`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import Citation
from ..registry import Entry
from .ddim import DDIMSchedule, add_noise, ddim_step, to_epsilon


@dataclass(frozen=True)
class Step:
    index: int  # the sampling step this move belongs to (0 = noisiest)
    t: int  # the model's timestep
    at: float  # the level the move starts from (DDIM: cumulative alpha)
    to: float  # the level it lands on


class DDIM(Entry):
    """Deterministic DDIM (Song et al., ICLR 2021, Eq. 12 with sigma = 0) on a diffusers scheduler
    config: the model's output (epsilon, v or sample prediction) is converted to the noise
    prediction eps, which the step and classifier-free guidance use. Inversion (Mokady et al.,
    CVPR 2023) is the same step with the two levels swapped at the same timestep."""

    name = "ddim"
    summary = "deterministic DDIM (eta 0) on the model's scheduler config; eps-space steps and guidance"
    papers = (Citation("Song et al., Denoising Diffusion Implicit Models, ICLR 2021", "Eq. 12 (sigma = 0)",
                       "diffusers (DDIMScheduler, DDIMInverseScheduler)"),)

    def __init__(self, config: dict):
        self.config = dict(config)
        self.prediction_type = self.config.get("prediction_type", "epsilon")

    def schedule(self, num_steps: int) -> tuple[Step, ...]:
        """The N sampling steps; a ``ValueError`` names the range when N does not fit the config."""
        s = DDIMSchedule.from_config(self.config, num_steps)
        return tuple(Step(i, t, a, b) for i, (t, a, b) in enumerate(zip(s.timesteps, s.alphas, s.alphas_next)))

    @staticmethod
    def reverse(step: Step) -> Step:
        """The inversion move that undoes sampling ``step``: from its landing level back to its start,
        the model evaluated at the same timestep on the less noisy latent."""
        return Step(step.index, step.t, step.to, step.at)

    @staticmethod
    def landing(step: Step) -> Step:
        """Where the model is evaluated at a move's landing point (the fixed-point inversions, SPDInv
        Eq. 3 and AIDI: eps at the candidate latent itself): DDIM's timestep is already the landing
        level's, so only the level changes."""
        return Step(step.index, step.t, step.to, step.to)

    @staticmethod
    def noised(z0: torch.Tensor, noise: torch.Tensor, step: Step) -> torch.Tensor:
        """The forward process: ``z0`` noised to the level sampling ``step`` starts from (Ho et al.
        2020, Eq. 4: sqrt(a) z0 + sqrt(1 - a) noise)."""
        return add_noise(z0, noise, step.at)

    def prediction(self, output: torch.Tensor, z: torch.Tensor, step: Step) -> torch.Tensor:
        """The model's output at ``step`` (on latents ``z`` at ``step.at``) as eps."""
        return to_epsilon(output, z, step.at, self.prediction_type)

    @staticmethod
    def step(z: torch.Tensor, eps: torch.Tensor, step: Step) -> torch.Tensor:
        """The deterministic move of ``z`` from ``step.at`` to ``step.to``."""
        return ddim_step(z, eps, step.at, step.to)


class FlowMatchEuler(Entry):
    """Rectified-flow Euler sampling (SD3, FLUX) on a ``FlowMatchEulerDiscreteScheduler`` config, the
    same interface as :class:`DDIM` with sigma as the level: the model's output is the velocity
    v = noise - x0 (:meth:`prediction` passes it through) and a move is x + (sigma' - sigma) v
    (:func:`locedit.diffusion.flow.euler_step`). ``tokens``: the image's token count, for FLUX's
    dynamic shift. Euler inversion (:meth:`reverse`) evaluates the model at the *lower* level, the
    one the inverse move starts from: the flow editors' inversion (Rout et al., ICLR 2025, Eq. 8 with
    gamma 0; RF-Solver's first order)."""

    name = "flow-euler"
    summary = "rectified-flow Euler steps on sigma (SD3, FLUX): velocity prediction, the schedule's shift"
    papers = (Citation("Esser et al., Scaling Rectified Flow Transformers for High-Resolution Image Synthesis, "
                       "ICML 2024", "Sec. 2 (the straight path), Sec. 5.3.2 (the shift)",
                       "diffusers (FlowMatchEulerDiscreteScheduler)"),)

    def __init__(self, config: dict, tokens: int | None = None):
        self.config, self.tokens = dict(config), tokens

    def _t(self, sigma: float) -> float:
        return float(sigma) * self.config.get("num_train_timesteps", 1000)

    def schedule(self, num_steps: int) -> tuple[Step, ...]:
        from .flow import flow_sigmas

        s = flow_sigmas(self.config, num_steps, self.tokens).tolist()
        return tuple(Step(i, self._t(s[i]), s[i], s[i + 1]) for i in range(num_steps))

    def reverse(self, step: Step) -> Step:
        """The inversion move from the landing level back up, the model evaluated there."""
        return Step(step.index, self._t(step.to), step.to, step.at)

    def landing(self, step: Step) -> Step:
        return Step(step.index, self._t(step.to), step.to, step.to)

    @staticmethod
    def noised(z0: torch.Tensor, noise: torch.Tensor, step: Step) -> torch.Tensor:
        """The straight path at the level sampling ``step`` starts from: (1 - sigma) z0 + sigma noise."""
        from .flow import noised

        return noised(z0, noise, step.at)

    @staticmethod
    def prediction(output: torch.Tensor, z: torch.Tensor, step: Step) -> torch.Tensor:
        return output  # the velocity, the quantity the step and guidance use

    @staticmethod
    def step(z: torch.Tensor, v: torch.Tensor, step: Step) -> torch.Tensor:
        from .flow import euler_step

        return euler_step(z, v, step.at, step.to)


# name -> sampler class (built from a model's scheduler config)
SAMPLERS: dict[str, type] = {"ddim": DDIM, "flow-euler": FlowMatchEuler}
