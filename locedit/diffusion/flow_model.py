"""Flow-matching transformer models (FLUX.1, Stable Diffusion 3 / 3.5) as one bundle, and plain
generation on the flow sampler (:mod:`.flow`).

:class:`FlowBundle` holds the diffusers pipeline the folder loads as (``FluxPipeline`` or
``StableDiffusion3Pipeline``) for its components and its prompt encoding - diffusers' own
``encode_prompt``: FLUX's CLIP pooled output and T5 token states, SD3's CLIP-L + CLIP-G (+ T5, optional
as ``text_encoder_3=None``) - and runs the transformer itself: :meth:`FlowBundle.velocity` takes
latents in the (B, C, h, w) layout every method sees, packing FLUX's 2x2 tokens with their position
ids inside. :func:`generate` equals the pipelines' own sampling (1e-4, tested on tiny random models).

Guidance: FLUX.1-dev's is distilled into the transformer (``guidance_embeds``: the scale is an
input, one model call per step); FLUX.1-schnell and models without the embedding take none, and
``true_cfg`` > 1 runs true classifier-free guidance against the empty prompt (FluxPipeline's
``true_cfg_scale``). SD3 runs classifier-free guidance against the empty prompt's encoding, one
batched call of two rows, as ``StableDiffusion3Pipeline``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import LoceditError
from . import flow

FLOW_FAMILIES = {"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3"}


@dataclass
class FlowText:
    """A prompt's encoding: token states (B, L, D), pooled (B, P), FLUX's text position ids (L, 3)."""

    states: torch.Tensor
    pooled: torch.Tensor
    ids: torch.Tensor | None = None


@dataclass
class FlowBundle:
    pipe: Any
    family: str  # "flux" | "sd3"
    name: str = ""
    unet_calls: int = 0  # transformer calls (the name the UNet bundles' counters share)
    offload_text: bool = False  # text encoders moved to the CPU after encoding
    max_sequence_length: int | None = None  # T5's padded length (None: the pipeline's default, 512 / 256)
    native_size: int | None = None  # the side the model was trained at, when its folder says (locedit's training.json)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """The side images are fitted to: the trained side the folder names (``training.json``'s
        ``image_size``, as locedit's shapes-flow does), else the pipeline's default
        (``default_sample_size * vae_scale_factor``: 1024 for FLUX.1 and SD3)."""
        if self.native_size:
            return int(self.native_size)
        return int(self.pipe.default_sample_size) * int(self.pipe.vae_scale_factor)

    @property
    def guidance_inert(self) -> bool:
        """A FLUX model without the distilled guidance embedding (FLUX.1-schnell, locedit's shapes-flow):
        a FLUX editor's or inversion's guidance scale reaches nothing there (:meth:`velocity` drops it, as
        ``FluxPipeline`` drops ``guidance_scale``)."""
        return self.family == "flux" and not self.transformer.config.guidance_embeds

    @property
    def latent_channels(self) -> int:
        cfg = self.transformer.config
        return cfg.in_channels // 4 if self.family == "flux" else cfg.in_channels

    @property
    def scheduler_config(self) -> dict:
        return dict(self.pipe.scheduler.config)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent (h, w) of an image: FLUX rounds to an even latent grid (its 2x2 packing)."""
        s = int(self.pipe.vae_scale_factor)
        if self.family == "flux":
            return 2 * (height // (s * 2)), 2 * (width // (s * 2))
        return height // s, width // s

    def tokens(self, h: int, w: int) -> int:
        """The image's token count (the dynamic shift's input)."""
        if self.family == "flux":
            return (h // 2) * (w // 2)
        p = self.transformer.config.patch_size
        return (h // p) * (w // p)

    def sigmas(self, num_steps: int, h: int, w: int) -> torch.Tensor:
        return flow.flow_sigmas(self.scheduler_config, num_steps, self.tokens(h, w))

    # ---- text -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> FlowText:
        """The prompts through diffusers' own ``encode_prompt`` (the encoders' arithmetic is theirs); with
        ``offload_text`` the encoders come to the transformer's device for the call and go back to the
        CPU after it (FLUX's T5 alone is 9 GB in bf16)."""
        dev = self.device
        encoders = [e for e in (getattr(self.pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))
                    if e is not None]
        if self.offload_text:
            for enc in encoders:
                enc.to(dev)
        length = {} if self.max_sequence_length is None else {"max_sequence_length": self.max_sequence_length}
        if self.family == "flux":
            states, pooled, ids = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=dev,
                                                          num_images_per_prompt=1, **length)
            text = FlowText(states, pooled, ids)
        else:
            states, _, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=dev,
                                                           num_images_per_prompt=1, do_classifier_free_guidance=False,
                                                           **length)
            text = FlowText(states, pooled)
        if self.offload_text:
            for enc in encoders:
                enc.to("cpu")
        return text

    # ---- the transformer -------------------------------------------------------------------------------
    def velocity(self, z: torch.Tensor, sigma: float, text: FlowText, guidance: float | None = None) -> torch.Tensor:
        """v (B, C, h, w) at ``sigma`` for latents ``z`` (B, C, h, w) and ``text`` with B rows (or one,
        broadcast); ``guidance``: FLUX's distilled scale when the transformer embeds it."""
        b, _, h, w = z.shape
        if self.family == "flux":
            ids = flow.image_ids(h // 2, w // 2).to(z.device, z.dtype)
            return flow.unpack(self.velocity_tokens(flow.pack(z), ids, sigma, text, guidance), h, w)
        t = torch.full((b,), float(sigma) * self.scheduler_config.get("num_train_timesteps", 1000),
                       device=z.device, dtype=z.dtype)
        states, pooled = text.states, text.pooled
        if states.shape[0] != b:
            states, pooled = states.expand(b, -1, -1), pooled.expand(b, -1)
        self.unet_calls += 1
        return self.transformer(hidden_states=z, timestep=t, encoder_hidden_states=states, pooled_projections=pooled,
                                return_dict=False)[0]

    def velocity_tokens(self, tokens: torch.Tensor, ids: torch.Tensor, sigma: float, text: FlowText,
                        guidance: float | None = None) -> torch.Tensor:
        """FLUX's v on packed tokens (B, N, 4C) at position ``ids`` (N, 3): any subset of the image's
        tokens (KV-Edit runs the transformer on the masked tokens alone)."""
        b = tokens.shape[0]
        t = torch.full((b,), float(sigma) * self.scheduler_config.get("num_train_timesteps", 1000),
                       device=tokens.device, dtype=tokens.dtype)
        states, pooled = text.states, text.pooled
        if states.shape[0] != b:
            states, pooled = states.expand(b, -1, -1), pooled.expand(b, -1)
        g = None
        if self.transformer.config.guidance_embeds:
            g = torch.full((b,), 3.5 if guidance is None else float(guidance), device=tokens.device, dtype=torch.float32)
        self.unet_calls += 1
        return self.transformer(hidden_states=tokens, timestep=t / 1000, guidance=g, pooled_projections=pooled,
                                encoder_hidden_states=states, txt_ids=text.ids, img_ids=ids, return_dict=False)[0]

    def rotary(self, text: FlowText, ids: torch.Tensor):
        """FLUX's rotary embedding (cos, sin) of the joint sequence [text tokens, image tokens at ``ids``]."""
        return self.transformer.pos_embed(torch.cat([text.ids.to(ids), ids], dim=0))

    # ---- images ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> latents (B, C, h, w): the posterior mean, shifted and scaled."""
        cfg = self.vae.config
        z = self.vae.encode((image.to(self.device, self.vae.dtype) * 2 - 1)).latent_dist.mean
        return ((z - (cfg.shift_factor or 0.0)) * cfg.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> (B, 3, H, W) in [0, 1]."""
        cfg = self.vae.config
        x = self.vae.decode((z / cfg.scaling_factor + (cfg.shift_factor or 0.0)).to(self.vae.dtype)).sample
        return ((x.float() + 1) / 2).clamp(0, 1)


UNET_FAMILIES = ("sd", "sdxl")


def check_family(bundle, families: tuple[str, ...], what: str, hint: str = "") -> None:
    """Refuse ``bundle`` when its family is not one of ``families`` (one line, before any model call);
    ``hint``: what to do instead on a flow model (default: its editors)."""
    family = getattr(bundle, "family", "sd")
    if family not in families:
        kinds = "UNet models (SD 1.x, 2.x, SDXL)" if tuple(families) == UNET_FAMILIES else ", ".join(families)
        if family in UNET_FAMILIES:
            raise LoceditError(f"{what} runs on {kinds}; {bundle.name!r} is a {family} UNet model")
        from ..flow.editors import FLOW_EDITORS

        editors = "|".join(n for n, e in FLOW_EDITORS.items() if family in e.families)
        raise LoceditError(f"{what} runs on {kinds}; {bundle.name!r} is a {family} model: "
                           + (hint or f"edit it with 'locedit edit --method {editors}'"))


def family_of(index: dict) -> str | None:
    """The flow family a ``model_index.json`` names, or None (a UNet model)."""
    name = index.get("_class_name")
    return FLOW_FAMILIES.get(name) if isinstance(name, str) else None


def from_flow_pipeline(pipe, name: str = "") -> FlowBundle:
    """A :class:`FlowBundle` over a ``FluxPipeline`` or ``StableDiffusion3Pipeline`` the caller holds
    (no weight loaded again)."""
    family = FLOW_FAMILIES.get(type(pipe).__name__)
    if family is None:
        raise LoceditError(f"{type(pipe).__name__} is not a flow pipeline locedit runs ({', '.join(FLOW_FAMILIES)})")
    pipe.set_progress_bar_config(disable=True)
    return FlowBundle(pipe, family, name=name or type(pipe).__name__)


@torch.no_grad()
def generate(bundle: FlowBundle, prompt: str, num_steps: int = 28, guidance: float | None = None, seed: int = 0,
             height: int | None = None, width: int | None = None, true_cfg: float = 1.0,
             progress=None) -> torch.Tensor:
    """Latents (1, C, h, w) sampled for ``prompt`` from noise drawn by a CPU generator seeded with
    ``seed`` (diffusers' pipelines with ``generator=torch.Generator().manual_seed(seed)`` draw the same).
    ``guidance``: FLUX's distilled scale (default 3.5) or SD3's classifier-free scale (default 7.0);
    ``true_cfg``: FLUX's true CFG against the empty prompt (1: off)."""
    from ..progress import track
    from .cfg import cfg

    height, width = height or bundle.image_size, width or bundle.image_size
    h, w = bundle.latent_size(height, width)
    noise = torch.randn((1, bundle.latent_channels, h, w), generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float32)
    z = noise.to(bundle.device, bundle.dtype)
    sigmas = bundle.sigmas(num_steps, h, w)
    scale = 7.0 if guidance is None else float(guidance)  # SD3's classifier-free scale
    if bundle.family == "sd3" and scale > 1:
        both = bundle.encode_text(["", prompt])  # one batched call of the two rows a step
    else:
        text = bundle.encode_text([prompt])
    if bundle.family == "flux" and true_cfg > 1:
        empty = bundle.encode_text([""])
    for k in track(progress, range(num_steps), f"{bundle.family} sampling"):
        if bundle.family == "sd3" and scale > 1:
            v_u, v_c = bundle.velocity(torch.cat([z, z]), sigmas[k], both).chunk(2)
            v = cfg(v_u, v_c, scale)
        else:
            v = bundle.velocity(z, sigmas[k], text, guidance)
            if bundle.family == "flux" and true_cfg > 1:
                v = cfg(bundle.velocity(z, sigmas[k], empty, guidance), v, true_cfg)
        z = flow.euler_step(z, v, sigmas[k], sigmas[k + 1])
    return z
