"""SDEdit as an editing method: noise the image to strength t0, then denoise it with the target
prompt (Meng et al., ICLR 2022), on a latent diffusion model as every later paper runs it.

The paper's Alg. 1 perturbs the input with the forward SDE to t0 and integrates the reverse
VP-SDE from there; on Stable Diffusion the baseline the editing papers report (LIME's Tab. 1-2,
LocInv's and MDE-Edit's related work) is the latent img2img form: the image latent noised to
``timesteps[N - int(N * strength)]`` with one seeded Gaussian draw (diffusers'
``StableDiffusionImg2ImgPipeline``), then the remaining steps of the sampler with CFG on the
target prompt. locedit's sampler is deterministic DDIM (eta = 0), the img2img pipeline with a
DDIM scheduler; the paper's stochastic SDE solver is not offered. The source prompt is not used
by the edit (it is kept for the record and the metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LoceditError
from .base import Citation, Method, Plan

SDEDIT_PAPER = Citation(
    "Meng et al., SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations, ICLR 2022",
    "Sec. 3.2, Alg. 1 (perturb to t0, then reverse SDE); strength as diffusers' img2img",
    "ermongroup/SDEdit (pixel-space SDE models); on SD: diffusers StableDiffusionImg2ImgPipeline")


@dataclass(frozen=True)
class SDEditOptions:
    """``strength``: t0 as a share of the schedule; 0 returns the input latent, 1 samples from pure
    noise (plain text-to-image). The paper finds t0 in [0.3, 0.6] balances faithfulness and
    realism (Sec. 4); locedit's default is its middle, 0.5."""

    strength: float = field(default=0.5, metadata={
        "flag": "sdedit-strength", "type": float,
        "help": "noise level t0 as a share of the steps: 0 keeps the input, 1 ignores it (default 0.5)"})

    def __post_init__(self):
        if not 0.0 <= self.strength <= 1.0:
            raise LoceditError(f"sdedit strength must be in [0, 1], got {self.strength}")

    def first_step(self, num_steps: int) -> int:
        """The first sampling step run (diffusers' img2img: ``N - int(N * strength)``)."""
        return num_steps - min(int(num_steps * self.strength), num_steps)


def noised_trajectory(bundle, z0, prompt: str, num_steps: int, seed: int, method: str):
    """The forward-noised trajectory of one seeded Gaussian draw: ``latents[N - i]`` is ``z0`` noised
    to ``timesteps[i]`` (Ho et al., Eq. 4), ``latents[0] = z0``. The draw is made on the CPU from a
    generator seeded with ``seed``, so results do not depend on the device."""
    import torch

    from ..inversion import Trajectory

    sampler = bundle.sampler
    steps = sampler.schedule(num_steps)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(z0.shape, generator=g, dtype=torch.float32).to(z0.device)
    latents = [z0] + [sampler.noised(z0, noise, steps[num_steps - k]) for k in range(1, num_steps + 1)]
    return Trajectory(method=method, prompt=prompt, num_steps=num_steps, guidance=1.0, latents=latents)


class SDEdit(Method):
    name = "sdedit"
    summary = "SDEdit: noise the image to --sdedit-strength, denoise with the target prompt (no mask, no inversion)"
    Options = SDEditOptions
    uses = frozenset()
    papers = (SDEDIT_PAPER,)

    @classmethod
    def check(cls, bundle, request, options) -> None:
        cls.check_text(bundle, request, options)

    @classmethod
    def build(cls, bundle, request, options) -> Plan:
        first = options.first_step(request.num_steps)
        return Plan(None, branches=("target",), first_step=first,
                    info={"sdedit": {"strength": options.strength, "first_step": first}})

    @classmethod
    def invert(cls, bundle, image, request, options, progress=None):
        import torch

        with torch.no_grad():
            z0 = bundle.encode_image(image)
        return noised_trajectory(bundle, z0, request.source, request.num_steps, request.seed, cls.name)
