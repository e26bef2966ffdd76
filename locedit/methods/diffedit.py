"""DiffEdit as an editing method: a mask from the difference of the noise estimates under the two
prompts, then the target sampled from the inversion's latent at the encoding ratio, the latents
outside the mask replaced by the inversion's at every step (Couairon et al., ICLR 2023).

Step 1 (mask, Sec. 3.2): the image latent is noised n = 10 times to 50 % of the schedule; the noise
estimates under the query (target) and reference (source) prompts are subtracted, the absolute
differences averaged over the n draws and the channels, extreme values removed, the map rescaled to
[0, 1] and thresholded at 0.5. Step 2 (encoding): the image is DDIM-encoded to the encoding ratio
r - here any inversion from the registry, read at step ``N - int(N r)``. Step 3 (decoding with mask
guidance): y_t = M * y~_t + (1 - M) * x_t, x_t the encoded latent at the level each step lands on,
so the last step pastes the image latent itself.

The authors released no code; the values the paper leaves open are those of diffusers'
``StableDiffusionDiffEditPipeline`` (the reference implementation): "extreme values removed" as a
clamp at 3 x the map's mean before the rescale (``mask_thresholding_ratio``), r = 0.8
(``inpaint_strength``), the noised latents at the img2img timestep of strength 0.5. Differences from
that pipeline: its mask uses CFG on both prompts, whose scale cancels in the normalised map (the
unconditional rows are the same for both), so locedit evaluates the two conditional rows only; its
decoding pastes the inverted latent of the timestep a step comes *from* (off by one level from Eq.
in Sec. 3.2, which locedit follows); its inversion is DDIM with CFG on the source prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LoceditError
from ..events import StepState, Subscriber
from .base import Citation, Method, Plan

DIFFEDIT_PAPER = Citation(
    "Couairon et al., DiffEdit: Diffusion-based Semantic Image Editing with Mask Guidance, ICLR 2023",
    "Sec. 3.2 (mask generation, encoding ratio, mask-guided decoding)",
    "no authors' code; reference: diffusers StableDiffusionDiffEditPipeline (generate_mask, invert, __call__)")

REFERENCES = ("source", "empty")


@dataclass(frozen=True)
class DiffEditOptions:
    """Mask: ``noises`` draws at ``mask_strength`` of the schedule, the map clamped at
    ``clamp_ratio`` x its mean, rescaled to [0, 1], above ``threshold`` in the mask; reference text
    R = the source prompt (or the empty prompt). Edit: start at the encoding ratio ``encode_ratio``."""

    encode_ratio: float = field(default=0.8, metadata={
        "flag": "diffedit-ratio", "type": float,
        "help": "encoding ratio r: sampling starts from the inversion's latent at this share of the steps (0.8)"})
    noises: int = field(default=10, metadata={
        "flag": "diffedit-noises", "type": int, "help": "noise draws averaged for the mask (n, 10)"})
    mask_strength: float = field(default=0.5, metadata={
        "flag": "diffedit-mask-strength", "type": float, "help": "noise level of the mask's draws (0.5)"})
    clamp_ratio: float = field(default=3.0, metadata={
        "flag": "diffedit-clamp", "type": float,
        "help": "extreme values removed: the map is clamped at this multiple of its mean before the rescale (3)"})
    threshold: float = field(default=0.5, metadata={
        "flag": "diffedit-threshold", "type": float, "help": "the rescaled map's threshold (0.5)"})
    reference: str = field(default="source", metadata={
        "flag": "diffedit-reference", "choices": REFERENCES,
        "help": "reference text R contrasted with the target: the source prompt or the empty prompt"})

    def __post_init__(self):
        if not 0.0 < self.encode_ratio <= 1.0:
            raise LoceditError(f"diffedit encode_ratio must be in (0, 1], got {self.encode_ratio}")
        if not 0.0 < self.mask_strength <= 1.0:
            raise LoceditError(f"diffedit mask_strength must be in (0, 1], got {self.mask_strength}")
        if self.noises < 1 or self.clamp_ratio <= 0 or not 0.0 < self.threshold < 1.0:
            raise LoceditError("diffedit needs noises >= 1, clamp_ratio > 0 and a threshold in (0, 1)")
        if self.reference not in REFERENCES:
            raise LoceditError(f"diffedit reference must be one of {REFERENCES}, got {self.reference!r}")


def mask_from_estimates(eps_reference, eps_query, clamp_ratio: float, threshold: float):
    """DiffEdit's mask from (n, C, h, w) noise estimates under R and Q: |Q - R| averaged over the draws
    and channels, clamped at ``clamp_ratio`` x its mean, rescaled to [0, 1], > ``threshold``.
    Returns (1, 1, h, w) float {0, 1}."""
    import torch

    diff = (eps_query - eps_reference).abs().mean(dim=(0, 1))
    top = diff.mean() * clamp_ratio
    scaled = diff.clamp(0, top) / top.clamp_min(torch.finfo(diff.dtype).tiny)
    return (scaled > threshold).float()[None, None]


def diffedit_mask(bundle, z0, reference: str, query: str, num_steps: int, options: DiffEditOptions, seed: int = 0):
    """(1, 1, h, w) DiffEdit mask of the image latent ``z0`` (Sec. 3.2): ``options.noises`` draws from
    a CPU generator seeded with ``seed``, each noising ``z0`` to the img2img timestep of
    ``options.mask_strength``; one UNet batch of the two conditional rows per draw. Usable as the
    mask of any method that takes one (upsampled to the image by nearest neighbour)."""
    import torch

    sampler = bundle.sampler
    steps = sampler.schedule(num_steps)
    k = num_steps - min(int(num_steps * options.mask_strength), num_steps)
    k = min(k, num_steps - 1)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((options.noises, *z0.shape[1:]), generator=g, dtype=torch.float32).to(z0.device)
    zt = sampler.noised(z0.expand(options.noises, -1, -1, -1), noise, steps[k])
    embeds = bundle.encode_text([reference, query])
    batch = torch.cat([embeds[:1].expand(options.noises, -1, -1), embeds[1:].expand(options.noises, -1, -1)])
    with torch.no_grad():
        eps = bundle.predict(torch.cat([zt, zt]), steps[k], batch)
    return mask_from_estimates(eps[: options.noises], eps[options.noises:], options.clamp_ratio, options.threshold)


class MaskedDecoding(Subscriber):
    """Steps 1-3 as the loop's subscriber: before the first sampling step the mask M is computed from
    the trajectory's image latent (its UNet calls are the edit's, in the clock's "prepare" phase, which
    no controller acts on); after step i, z = z * M + x_i * (1 - M), x_i the trajectory's latent at
    the level step i lands on."""

    def __init__(self, reference: str, query: str, num_steps: int, options: DiffEditOptions, seed: int):
        self.args = (reference, query, num_steps, options, seed)

    def prepare(self, bundle, trajectory):
        reference, query, num_steps, options, seed = self.args
        self.blend_mask = diffedit_mask(bundle, trajectory.latents[0].to(bundle.device), reference, query, num_steps,
                                        options, seed)
        if not self.blend_mask.any():
            raise LoceditError("the DiffEdit mask is empty: the two prompts' noise estimates differ nowhere above "
                               "the threshold (lower --diffedit-threshold or raise --diffedit-clamp)")

    def before_step(self, state: StepState) -> None:
        if self.blend_mask is None:
            state.controller.clock.set(state.step, state.t, "prepare")
            self.prepare(state.bundle, state.trajectory)

    def after_step(self, state: StepState) -> None:
        bg = state.trajectory.target_latent(state.step).to(state.z_next)
        state.z_next = state.z_next * self.blend_mask + bg * (1 - self.blend_mask)


class DiffEdit(Method):
    name = "diffedit"
    summary = "DiffEdit: a mask from the two prompts' noise estimates, then masked decoding from the inversion"
    Options = DiffEditOptions
    uses = frozenset({"inversion"})
    inversion = "ddim"  # DiffEdit's encoding is DDIM's
    papers = (DIFFEDIT_PAPER,)

    @classmethod
    def check_text(cls, text, request, options) -> None:
        super().check_text(text, request, options)
        if request.source == request.target and options.reference == "source":
            raise LoceditError("diffedit contrasts the two prompts: source and target are the same")

    @classmethod
    def build(cls, bundle, request, options) -> Plan:
        first = request.num_steps - min(int(request.num_steps * options.encode_ratio), request.num_steps)
        reference = request.source if options.reference == "source" else ""
        decoding = MaskedDecoding(reference, request.target, request.num_steps, options, request.seed)
        return Plan(None, (decoding,), branches=("target",), first_step=first,
                    info={"diffedit": {"first_step": first}})
