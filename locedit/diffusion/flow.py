"""The flow-matching sampler: pure functions over sigmas, beside DDIM's (:mod:`.sampler`).

A rectified-flow model (SD3, FLUX) predicts a velocity v = noise - x0 on the straight path
x_sigma = (1 - sigma) x0 + sigma * noise. Sampling walks sigma from 1 to 0 with Euler steps
x' = x + (sigma' - sigma) v; Euler *inversion* walks the same schedule backwards, from 0 towards 1,
with the same formula evaluated at the lower sigma (the model is called at sigma, not sigma'), which
is the inversion every flow editor starts from (FlowEdit needs none; RF-Solver, FireFlow and
RF-Inversion refine it).

The schedule is diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps`` for the configurations
SD3 and FLUX ship, written out (tested equal to it):

- FLUX (``use_dynamic_shifting``): sigmas ``linspace(1, 1/N, N)`` shifted by
  ``e^mu / (e^mu + (1/s - 1))``, mu linear in the image's token count (``calculate_shift``);
- SD3 (static ``shift`` 3.0): ``linspace(t(sigma_max), t(sigma_min), N) / 1000`` over the scheduler's
  shifted training sigmas, shifted again by ``shift s / (1 + (shift - 1) s)`` - as diffusers does;

then a final sigma 0. Options the families do not use (Karras, exponential or beta sigmas, a
terminal stretch, inverted sigmas, stochastic sampling) are refused in one line.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import LoceditError

_UNSUPPORTED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "shift_terminal", "invert_sigmas",
                "stochastic_sampling")


def calculate_shift(tokens: int, config: dict) -> float:
    """FLUX's mu for ``tokens`` image tokens: linear from ``base_shift`` at ``base_image_seq_len`` to
    ``max_shift`` at ``max_image_seq_len`` (diffusers' ``calculate_shift``)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    m = (top - base) / (max_len - base_len)
    return tokens * m + base - m * base_len


def _static_shift(s, shift: float):
    return shift * s / (1 + (shift - 1) * s)


def flow_sigmas(config: dict, num_steps: int, tokens: int | None = None) -> torch.Tensor:
    """(N + 1,) float32 sigmas from 1 (noise) down to the last step's, then 0, for a scheduler
    ``config`` (a ``FlowMatchEulerDiscreteScheduler`` config) and ``tokens`` image tokens (the dynamic
    shift's input; FLUX needs it, SD3 ignores it)."""
    for key in _UNSUPPORTED:
        if config.get(key):
            raise LoceditError(f"the flow scheduler option {key!r} is not supported (SD3 and FLUX do not use it)")
    if num_steps < 1:
        raise LoceditError(f"num_steps must be >= 1, got {num_steps}")
    n_train = config.get("num_train_timesteps", 1000)
    if config.get("use_dynamic_shifting"):
        if tokens is None:
            raise LoceditError("this model's schedule shifts with the image size: give the image's token count")
        if config.get("time_shift_type", "exponential") != "exponential":
            raise LoceditError(f"time_shift_type {config.get('time_shift_type')!r} is not supported")
        s = np.linspace(1.0, 1 / num_steps, num_steps).astype(np.float32)
        mu = calculate_shift(tokens, config)
        s = math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)
    else:
        shift = config.get("shift", 1.0)
        train = _static_shift(np.linspace(1, n_train, n_train, dtype=np.float32)[::-1].copy() / n_train, shift)
        sigma_max, sigma_min = float(train[0]), float(train[-1])
        s = np.linspace(sigma_max * n_train, sigma_min * n_train, num_steps) / n_train
        s = _static_shift(s, shift)
    sigmas = torch.from_numpy(np.asarray(s, dtype=np.float32)).to(torch.float32)
    return torch.cat([sigmas, torch.zeros(1)])


def timesteps(sigmas: torch.Tensor, config: dict) -> torch.Tensor:
    """The model's timestep input for each step (sigma times the training steps; the pipelines divide
    by 1000 again before the transformer)."""
    return sigmas[:-1] * config.get("num_train_timesteps", 1000)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """x + (sigma_next - sigma) v, in float32 and cast back (diffusers' ``FlowMatchEulerDiscreteScheduler.step``).
    Sampling goes down (sigma_next < sigma); Euler inversion goes up with the same step."""
    return (x.float() + (float(sigma_next) - float(sigma)) * v.float()).to(x.dtype)


def inversion_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The sampling schedule walked from 0 up: (0, s_{N-1}, ..., s_0 = 1); step k of the inversion
    goes from sigma[k] to sigma[k + 1], the reverse of the sampling step that lands on sigma[k]."""
    return sigmas.flip(0)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The straight path: (1 - sigma) x0 + sigma * noise (what the model was trained to denoise)."""
    return (1 - sigma) * x0 + sigma * noise


# ---- FLUX's 2x2 packing ---------------------------------------------------------------------------------------
def pack(z: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = z.shape
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack` for latents of height ``h`` and width ``w``."""
    b, _, d = x.shape
    x = x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def image_ids(h: int, w: int) -> torch.Tensor:
    """(h * w, 3) position ids of packed tokens on an h x w grid: (0, row, column), FluxPipeline's."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


# ---- the solvers the flow editors invert and sample with -----------------------------------------------------
SOLVERS = ("euler", "rf-solver", "fireflow", "uni-inv")


def walk(velocity, x: torch.Tensor, levels: list[float], solver: str = "euler", clock=None,
         after_step=None) -> tuple[torch.Tensor, int]:
    """Integrate dx/dt = v(x, t) over ``levels`` (sampling: from 1 down; inversion: the reversed
    schedule, up), with ``velocity(x, t)`` the model; returns (x, model calls). ``clock(i, stage)``,
    if given, is called before each model call of step i, stage "first" (at the step's start), "mid"
    (the second-order solvers' midpoint) or "next" (Uni-Inv's corrector at the step's end): an
    editor's attention control keys its caches on it.
    ``after_step(i, x)`` may replace the latent after step i (a mask's blend).

    - ``euler``: x' = x + (t' - t) v(x, t); one call a step.
    - ``rf-solver`` (Wang et al., "Taming Rectified Flow for Inversion and Editing", ICML 2025, Eq. 8):
      the second-order Taylor step x' = x + D v + D^2/2 v', the derivative from a half step,
      v' = (v(x + D/2 v, t + D/2) - v(x, t)) / (D/2), D = t' - t; two calls a step.
    - ``fireflow`` (Deng et al., "FireFlow: Fast Inversion of Rectified Flow for Image Semantic
      Editing", ICML 2025, Eq. 9-10): the midpoint step x' = x + D v(x + D/2 v~, t + D/2), where v~ is
      the previous step's midpoint velocity (the model's own at the first step); one call a step
      after the first.

    - ``uni-inv`` (Jiao et al., "UniEdit-Flow: Unleashing Inversion and Editing in the Era of Flow
      Models", 2025; DSL-Lab/UniEdit-Flow ``denoise_uniinv``): predictor-corrector, x~ = x + D v~,
      x' = x + D v(x~, t'), where v~ is the previous step's corrector velocity (the model's own at the
      first step); one call a step after the first.

    The second-order steps run in RF-Solver-Edit's, FireFlow's and UniEdit-Flow's side-by-side runs
    (bench/peers/flux_run.py, equal to the authors' code to float rounding)."""
    if solver not in SOLVERS:
        raise LoceditError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    calls, reuse = 0, None
    for i, (t, t_next) in enumerate(zip(levels[:-1], levels[1:])):
        d = float(t_next) - float(t)
        if solver in ("fireflow", "uni-inv") and reuse is not None:
            v = reuse
        else:
            if clock is not None:
                clock(i, "first")
            v, calls = velocity(x, t), calls + 1
        if solver == "euler":
            x = euler_step(x, v, t, t_next)
        elif solver == "uni-inv":
            if clock is not None:
                clock(i, "next")
            reuse = velocity(euler_step(x, v, t, t_next), t_next)
            calls += 1
            x = euler_step(x, reuse, t, t_next)
        else:
            if clock is not None:
                clock(i, "mid")
            v_mid = velocity((x.float() + d / 2 * v.float()).to(x.dtype), float(t) + d / 2)
            calls += 1
            if solver == "rf-solver":
                slope = (v_mid.float() - v.float()) / (d / 2)
                x = (x.float() + d * v.float() + 0.5 * d * d * slope).to(x.dtype)
            else:
                x, reuse = euler_step(x, v_mid, t, t_next), v_mid
        if after_step is not None:
            x = after_step(i, x)
    return x, calls
