"""Blended Latent Diffusion as an editing method: sample with the target prompt and, after every
step, replace the latents outside the user mask by the source latents noised to that step
(Avrahami et al., ACM TOG 2023).

Paper, Alg. 1: z_fg ~ denoise(z_t, d, t); z_bg ~ noise(z_init, t); z_t = z_fg * m + z_bg * (1 - m),
from a start k. The authors' Stable Diffusion script (scripts/text_editing_stable_diffusion.py)
makes these choices, all followed here:

- the image latent is the VAE posterior *mean*; the mask is resized to the latent grid by nearest
  neighbour and thresholded at 0.5;
- the first ``int(N * 0.25)`` of the N = 50 DDIM steps are skipped (``blending_start_percentage``);
- each step's background is the source noised with a *fresh* Gaussian draw to the timestep the step
  denoised *from* (``add_noise(source, randn_like, t)`` after ``step(..., t, ...)``), so the final
  background is the source at t = timesteps[-1], not the clean latent;
- CFG 7.5 with the empty prompt, one seeded generator (42 in the script) for every draw.

Paper and code differ on the start: Alg. 1 starts from the source noised to that level
(``z_k ~ noise(z_init, k)``, ``init="source"``, the default as for every method: the paper's
reading); the script starts the loop from *pure Gaussian noise* at the skipped-to timestep
(``init="noise"``, the official preset).
The draws come from a CPU generator seeded with the edit's seed (start noise first, then one per
step, as the script's order); the script draws the per-step noise on the GPU, so its exact noise
cannot be reproduced.

``noise="inversion"`` is locedit's any-inversion reading for the inversion x engine tables: the
background after step i is the inversion's latent at the level step i lands on (exactly the image
latent after the last step) and the start is the inversion's latent at the first step; no draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LoceditError
from ..events import StepState, Subscriber
from .base import Citation, Method, Plan

BLD_PAPER = Citation(
    "Avrahami et al., Blended Latent Diffusion, ACM TOG 42(4), 2023", "Sec. 3, Alg. 1",
    "omriav/blended-latent-diffusion (scripts/text_editing_stable_diffusion.py)")

NOISES = ("fresh", "inversion")
INITS = ("noise", "source")


@dataclass(frozen=True)
class BlendedOptions:
    """``start``: the share of steps skipped before sampling (the script's 0.25); ``init``: the
    start latent, pure noise (the code) or the noised source (Alg. 1); ``noise``: where the
    background comes from, fresh draws (paper and code) or an inversion's trajectory (locedit)."""

    start: float = field(default=0.25, metadata={
        "flag": "blended-start", "type": float,
        "help": "share of the steps skipped before sampling starts (the script's blending_start_percentage, 0.25)"})
    init: str = field(default="source", metadata={
        "flag": "blended-init", "choices": INITS,
        "help": "start latent: the source noised to the start (the paper's Alg. 1; with --blended-noise "
                "inversion, the inversion's latent) or pure Gaussian noise (the authors' script)"})
    noise: str = field(default="fresh", metadata={
        "flag": "blended-noise", "choices": NOISES,
        "help": "background: the source noised with fresh seeded draws (paper and code) or the latents of "
                "--inversion (locedit's any-inversion reading)"})

    PRESETS = {"official": {"init": "noise"}}

    def __post_init__(self):
        if not 0.0 <= self.start < 1.0:
            raise LoceditError(f"blended start must be in [0, 1), got {self.start}")
        if self.noise not in NOISES:
            raise LoceditError(f"blended noise must be one of {NOISES}, got {self.noise!r}")
        if self.init not in INITS:
            raise LoceditError(f"blended init must be one of {INITS}, got {self.init!r}")
        if self.init == "noise" and self.noise == "inversion":
            raise LoceditError("--blended-init noise does not apply with --blended-noise inversion: the inversion's "
                               "latent at the first step is the start")

    def first_step(self, num_steps: int) -> int:
        return int(num_steps * self.start)


class LatentBlend(Subscriber):
    """After sampling step ``i``: z = z * m + background(i) * (1 - m) on every sampled row, with the
    background the trajectory's ``target_latent(i)`` (Alg. 1's z_bg)."""

    def __init__(self, mask):
        self.blend_mask = mask  # (1, 1, h, w) binary

    def after_step(self, state: StepState) -> None:
        bg = state.trajectory.target_latent(state.step).to(state.z_next)
        state.z_next = state.z_next * self.blend_mask + bg * (1 - self.blend_mask)


def blended_trajectory(bundle, z0, prompt: str, num_steps: int, first: int, init: str, seed: int):
    """The trajectory of the script's draws: ``latents[N - first]`` the start (pure noise, or the
    source noised to ``timesteps[first]``), ``latents[N - i - 1]`` the background pasted after step
    i = the source noised with its own draw to ``timesteps[i]`` (the level step i denoised from, as the
    script); ``image_latent`` the source. Draws on a CPU generator: the start, then one per step."""
    import torch

    from ..inversion import Trajectory

    sampler = bundle.sampler
    steps = sampler.schedule(num_steps)
    g = torch.Generator().manual_seed(seed)

    def draw():
        return torch.randn(z0.shape, generator=g, dtype=torch.float32).to(z0.device)

    start = draw()
    if init == "source":
        start = sampler.noised(z0, start, steps[first])
    latents = [None] * (num_steps + 1)
    for i in range(first, num_steps):
        latents[num_steps - i - 1] = sampler.noised(z0, draw(), steps[i])
    for k in range(num_steps - first, num_steps + 1):  # the start, and the unused levels before it
        latents[k] = start
    return Trajectory(method="blended", prompt=prompt, num_steps=num_steps, guidance=1.0, latents=latents,
                      image_latent=z0)


class Blended(Method):
    name = "blended"
    summary = "Blended Latent Diffusion: target sampling, the background replaced by the noised source (--mask)"
    Options = BlendedOptions
    uses = frozenset({"mask", "inversion"})
    inversion = "ddim"  # with --blended-noise inversion: a plain DDIM inversion
    needs = frozenset({"mask"})
    missing = "blended needs the region to edit: --mask MASK.png or --box x0,y0,x1,y1"
    papers = (BLD_PAPER,)

    @classmethod
    def takes_inversion(cls, options) -> bool:
        return options.noise == "inversion"

    @classmethod
    def check(cls, bundle, request, options) -> None:
        from ..masks import check_mask

        cls.check_text(bundle, request, options)
        if request.mask is None:
            raise LoceditError(cls.missing)
        mask = latent_mask(bundle, check_mask(request.mask, (bundle.image_size, bundle.image_size)))
        if not mask.any():
            raise LoceditError("the blended mask has no latent cell at 0.5 or more: nothing would be edited")

    @classmethod
    def build(cls, bundle, request, options) -> Plan:
        first = options.first_step(request.num_steps)
        return Plan(None, (LatentBlend(latent_mask(bundle, request.mask)),), branches=("target",), first_step=first,
                    info={"blended": {"first_step": first, "noise": options.noise, "init": options.init}})

    @classmethod
    def invert(cls, bundle, image, request, options, progress=None):
        import torch

        with torch.no_grad():
            z0 = bundle.encode_image(image)
        return blended_trajectory(bundle, z0, request.source, request.num_steps, options.first_step(request.num_steps),
                                  options.init, request.seed)


def latent_mask(bundle, mask):
    """(1, 1, S, S) -> (1, 1, h, w) float {0, 1}: nearest neighbour (Pillow's NEAREST picks each cell's
    centre pixel, as torch's "nearest-exact"), then >= 0.5, as the script's ``_read_mask``."""
    import torch.nn.functional as F

    side = bundle.image_size // bundle.vae_scale
    small = F.interpolate(mask.float(), size=(side, side), mode="nearest-exact")
    return (small >= 0.5).float().to(bundle.device)
