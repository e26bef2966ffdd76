"""The flow inversions (registry :data:`locedit.flow.inversions.FLOW_INVERSIONS`): an image latent
walked up to the noise level under a prompt, and sampled back down by the same rule.

- ``euler``, ``rf-solver``, ``fireflow``, ``uni-inv``: :func:`locedit.diffusion.flow.walk` over the
  sampling schedule reversed (0 up to 1), the model's velocity on the prompt (``options.prompt``:
  the source or the empty one) at ``options.guidance`` - FLUX's distilled scale, or on SD3 the
  classifier-free scale against the empty prompt (1: none, one call); the reconstruction walks the
  schedule down with the same solver.
- ``rf-inversion`` (FLUX): the controlled forward ODE of Alg. 1 (:func:`.rf_inversion.rf_invert`,
  equal to diffusers' community pipeline, ``bench/peers/flux_run.py``) from one noise draw seeded
  ``seed``; the reconstruction is its reverse ODE (Alg. 2) with eta 0 on the same prompt and
  guidance - plain Euler sampling, so it shows what the noise alone holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion import flow
from ..errors import LoceditError
from .editors import refuse_inert_guidance
from .inversions import FLOW_INVERSIONS


@dataclass
class FlowInverted:
    """An inverted image: the latent at the top of the schedule and how it was reached."""

    noise: torch.Tensor  # (1, C, h, w)
    inversion: str
    options: object
    prompt: str  # the prompt the velocities were taken on ("" for the empty one)
    steps: int
    seed: int
    calls: int


def _velocity(bundle, prompt: str, guidance: float):
    """v(z, t) on ``prompt``: FLUX at distilled ``guidance``; SD3 with classifier-free ``guidance``
    against the empty prompt when above 1 (one batched call, as ``generate`` does)."""
    from ..diffusion.cfg import cfg

    if bundle.family == "sd3" and guidance > 1:
        both = bundle.encode_text(["", prompt])

        def v(z, t):
            v_u, v_c = bundle.velocity(torch.cat([z, z]), t, both).chunk(2)
            return cfg(v_u, v_c, guidance)

        return v
    text = bundle.encode_text([prompt])
    return lambda z, t: bundle.velocity(z, t, text, guidance)


def check_inversion(bundle, inversion: str, options):
    """(registry entry, options with the entry's defaults) of ``inversion`` on ``bundle``, refused in one
    line - an unknown name, a family it does not run on, another inversion's options, a guidance scale
    set on a FLUX model without the guidance embedding - before any call."""
    if inversion not in FLOW_INVERSIONS:
        raise LoceditError(f"unknown flow inversion {inversion!r}; choose from {', '.join(FLOW_INVERSIONS)}")
    entry = FLOW_INVERSIONS[inversion]
    if bundle.family not in entry.families:
        raise LoceditError(f"--inversion {inversion} runs on {', '.join(entry.families)} models; "
                           f"{bundle.name!r} is a {bundle.family} model")
    if options is not None and not isinstance(options, entry.Options):
        raise LoceditError(f"--inversion {inversion} takes {entry.Options.__name__}, not {type(options).__name__}")
    options = options if options is not None else entry.Options()
    refuse_inert_guidance(options, entry.Options(), bundle)
    return entry, options


def _ticks(progress, steps: int, desc: str):
    from ..progress import track

    ticks = iter(track(progress, range(steps), desc))
    return lambda i, z: (next(ticks, None), z)[1]


@torch.no_grad()
def invert(bundle, x0: torch.Tensor, prompt: str, inversion: str = "euler", steps: int = 28, options=None,
           seed: int = 0, progress=None) -> FlowInverted:
    """``x0`` (1, C, h, w), an image latent, inverted by ``inversion`` over ``steps`` steps."""
    entry, o = check_inversion(bundle, inversion, options)
    if steps < 1:
        raise LoceditError(f"steps must be >= 1, got {steps}")
    text_prompt = prompt if o.prompt == "source" else ""
    x = x0.to(bundle.device, bundle.dtype)
    _, _, h, w = x.shape
    sigmas = bundle.sigmas(steps, h, w).tolist()
    calls0 = bundle.unet_calls
    if entry.solver:
        velocity, clock = _velocity(bundle, text_prompt, o.guidance), None
        if getattr(o, "zero_init", False):
            from .uniedit import zero_init

            velocity, clock = zero_init(velocity)
        z, _ = flow.walk(velocity, x, sigmas[::-1], entry.solver, clock=clock,
                         after_step=_ticks(progress, steps, f"{inversion} inversion"))
    else:
        from .rf_inversion import rf_invert

        y0 = flow.pack(x)
        y1 = torch.randn(y0.shape, generator=torch.Generator().manual_seed(seed)).to(y0)
        ids = flow.image_ids(h // 2, w // 2).to(x.device, x.dtype)
        z = flow.unpack(rf_invert(bundle, y0, ids, bundle.encode_text([text_prompt]), o.gamma, o.guidance, sigmas,
                                  y1, progress), h, w)
    return FlowInverted(z, inversion, o, text_prompt, steps, seed, bundle.unet_calls - calls0)


@torch.no_grad()
def reconstruct(bundle, inverted: FlowInverted, progress=None) -> tuple[torch.Tensor, int]:
    """(x0 latent, model calls): ``inverted.noise`` sampled back down on its prompt and guidance, by its
    solver (RF-Inversion: Euler, its reverse ODE at eta 0)."""
    entry = FLOW_INVERSIONS[inverted.inversion]
    z = inverted.noise
    _, _, h, w = z.shape
    sigmas = bundle.sigmas(inverted.steps, h, w).tolist()
    calls0 = bundle.unet_calls
    z, _ = flow.walk(_velocity(bundle, inverted.prompt, inverted.options.guidance), z, sigmas,
                     entry.solver or "euler", after_step=_ticks(progress, inverted.steps, "reconstruction"))
    return z, bundle.unet_calls - calls0
