"""The model bundle: UNet, VAE, text encoder(s), tokenizer(s) and scheduler config, with the few
operations every method needs (encode text, encode/decode images, predict noise).

Images in the core are float tensors (B, 3, H, W) in [0, 1]; latents are float32 (B, C, h, w)
already multiplied by ``vae.config.scaling_factor``. The networks may run in fp16/bf16; every
step, loss and optimisation in locedit runs in float32 and casts at the network's door.

**Text embeddings** are one (B, L, D) tensor everywhere, whatever the model family, so that every
inversion, controller and guidance loop handles them alike:

- SD 1.x / 2.x: the text encoder's last hidden state, L = the tokenizer's 77 tokens.
- SDXL (Podell et al. 2023, Sec. 2.1; diffusers' ``StableDiffusionXLPipeline.encode_prompt``):
  both encoders' penultimate hidden states concatenated along D (768 + 1280 = 2048), then **one
  extra row**: the second encoder's pooled, projected embedding (1280), zero-padded to D. So
  L = 77 + 1. :meth:`ModelBundle.predict_eps` splits the row off into the UNet's
  ``added_cond_kwargs["text_embeds"]`` and adds ``time_ids`` (original size, crop top-left, target
  size = the latent's image size, (0, 0), the same size: the pipeline's defaults), so attention
  processors and controllers only ever see the 77 token rows. Whatever optimises an embedding
  (null-text inversion, LocInv's null per step) therefore optimises the pooled null together with
  the sequence, with no change to its loop. The empty prompt ``""`` - the "null" of classifier-free
  guidance - is the zero embedding (sequence and pooled) when the model's ``model_index.json`` sets
  ``force_zeros_for_empty_prompt`` (SDXL base: true), as the SDXL pipeline's default negative is.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import torch

from .ddim import DDIMSchedule, to_epsilon
from .sampler import DDIM, Step


@dataclass
class ModelBundle:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    name: str = "model"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    unet_calls: int = 0  # number of UNet forward passes since the last reset
    # SDXL: the second text encoder (CLIPTextModelWithProjection) and its tokenizer; None for SD 1.x/2.x
    text_encoder_2: torch.nn.Module | None = None
    tokenizer_2: object | None = None
    force_zeros_for_empty_prompt: bool = False  # SDXL: the empty prompt's embedding is zeros

    # ---- derived facts -------------------------------------------------------------------------
    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """The square image side the model was trained at."""
        return int(self.unet.config.sample_size) * self.vae_scale

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def family(self) -> str:
        """``sdxl`` (two text encoders, pooled embedding and time ids added to the UNet) or ``sd``."""
        return "sdxl" if self.pooled_dim else "sd"

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled text embedding the UNet takes besides the sequence (SDXL), else 0."""
        if getattr(self.unet.config, "addition_embed_type", None) != "text_time":
            return 0
        return int(self.text_encoder_2.config.projection_dim)

    @property
    def embed_length(self) -> int:
        """L of the (B, L, D) embeddings: the token rows, plus the pooled row on SDXL."""
        return self.max_tokens + (1 if self.pooled_dim else 0)

    def _encoders(self) -> list[tuple[object, torch.nn.Module]]:
        pairs = [(self.tokenizer, self.text_encoder)]
        if self.text_encoder_2 is not None:
            pairs.append((self.tokenizer_2, self.text_encoder_2))
        return pairs

    def schedule(self, num_steps: int) -> DDIMSchedule:
        return DDIMSchedule.from_config(self.scheduler_config, num_steps)

    @functools.cached_property
    def sampler(self) -> DDIM:
        """The sampler the editing loop and the inversions walk (:mod:`locedit.diffusion.sampler`),
        built once from the scheduler config (:meth:`predict` uses it at every model call)."""
        return DDIM(self.scheduler_config)

    def steps(self, num_steps: int) -> tuple[Step, ...]:
        """The sampler's N sampling steps."""
        return self.sampler.schedule(num_steps)

    # ---- text ----------------------------------------------------------------------------------
    def token_ids(self, prompt: str) -> list[int]:
        """Token ids of ``prompt`` with start and end tokens, unpadded; refuses over-long prompts."""
        from .textside import prompt_ids

        return prompt_ids(self.tokenizer, prompt)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(B, L, D) float32 text embeddings, padded to the tokenizer's max length (see the module
        docstring for SDXL's layout)."""
        for p in prompts:
            self.token_ids(p)
        return self._encode(prompts, {})

    def token_embedding_table(self) -> torch.nn.Embedding:
        """The (first) text encoder's input token-embedding table (never modified by locedit)."""
        return self.text_encoder.get_input_embeddings()

    def token_width(self) -> int:
        """Width of an input token vector: the token-embedding table's (on SDXL both tables', the
        first encoder's entries then the second's)."""
        return sum(int(te.get_input_embeddings().weight.shape[1]) for _, te in self._encoders())

    def input_token_vectors(self, ids: list[int]) -> torch.Tensor:
        """(n, token_width) float32 copies of the input token embeddings of ``ids`` (never the
        tables themselves; on SDXL both tables' rows, concatenated)."""
        idx = torch.tensor(ids, dtype=torch.long, device=self.device)
        return torch.cat([te.get_input_embeddings().weight[idx].detach().float()
                          for _, te in self._encoders()], dim=-1).clone()

    def encode_text_with_tokens(self, prompt: str, vectors: dict[int, torch.Tensor]) -> torch.Tensor:
        """(1, L, D) embedding of ``prompt`` with the input token embeddings at the given positions
        replaced by ``vectors`` (each (token_width,)); gradients flow to the vectors only.

        Uses forward hooks on the token-embedding tables, removed in ``finally``; the tables
        themselves are never written (LocInv / dynamic prompt learning learn such per-step token
        vectors). On SDXL a vector holds both encoders' entries and each table gets its part.
        """
        self.token_ids(prompt)
        return self._encode([prompt], vectors)

    def _encode(self, prompts: list[str], vectors: dict[int, torch.Tensor]) -> torch.Tensor:
        xl = self.text_encoder_2 is not None
        seqs, pooled, offset = [], None, 0
        for tok, te in self._encoders():
            ids = tok(prompts, padding="max_length", max_length=self.max_tokens, truncation=True,
                      return_tensors="pt").input_ids.to(self.device)
            table = te.get_input_embeddings()
            width = int(table.weight.shape[1])

            def hook(module, inputs, output, lo=offset, hi=offset + width):
                output = output.clone()
                for pos, vec in vectors.items():
                    output[:, pos] = vec[lo:hi].to(output)
                return output

            handle = table.register_forward_hook(hook) if vectors else None
            try:
                out = te(ids, output_hidden_states=xl)
            finally:
                if handle is not None:
                    handle.remove()
            offset += width
            if not xl:
                return out[0].float()
            seqs.append(out.hidden_states[-2])  # SDXL conditions on the penultimate layer
            if getattr(out, "text_embeds", None) is not None:
                pooled = out.text_embeds
        seq = torch.cat(seqs, dim=-1).float()  # (B, 77, D)
        row = torch.nn.functional.pad(pooled.float(), (0, seq.shape[-1] - pooled.shape[-1]))[:, None]
        emb = torch.cat([seq, row], dim=1)  # (B, 78, D): the pooled embedding as the last row
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=emb.device)
            emb = torch.where(empty[:, None, None], torch.zeros_like(emb), emb)
        return emb

    # ---- memory ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def checkpointing(self, enabled: bool = True):
        """Gradient checkpointing of the UNet's blocks for the duration: where a gradient is taken
        (null-text and SPDInv searches, LocInv's token learning, MAG-Edit's and MDE-Edit's latent
        guidance), each block's activations are recomputed in the backward pass instead of being
        kept, which trades one more forward per backward for memory. No-gradient calls are
        unchanged (diffusers checkpoints only while gradients are enabled). Restored on exit."""
        unet = self.unet
        flags = [m for m in unet.modules() if hasattr(m, "gradient_checkpointing")]
        before = [m.gradient_checkpointing for m in flags]
        if enabled and not getattr(unet, "_supports_gradient_checkpointing", False):
            from ..errors import LoceditError

            raise LoceditError(f"{type(unet).__name__} does not support gradient checkpointing")
        try:
            if enabled:
                unet.enable_gradient_checkpointing()
            yield
        finally:
            for m, b in zip(flags, before):
                m.gradient_checkpointing = b

    # ---- images ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, sample_seed: int | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> scaled latents (B, C, H/s, W/s): the posterior mean, or with
        ``sample_seed`` a posterior sample, mean + std * noise, the noise drawn on the CPU from a
        generator seeded with it (diffusers' ``latent_dist.sample(torch.manual_seed(seed))``)."""
        x = (image.to(self.device, self.vae.dtype) * 2 - 1)
        dist = self.vae.encode(x).latent_dist
        z = dist.mean
        if sample_seed is not None:
            g = torch.Generator().manual_seed(sample_seed)
            z = z + dist.std * torch.randn(z.shape, generator=g, dtype=z.dtype).to(z.device)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((z - shift) * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def encode_image_condition(self, image: torch.Tensor) -> torch.Tensor:
        """InstructPix2Pix's image conditioning: the posterior mode, *unscaled* (as diffusers'
        StableDiffusionInstructPix2PixPipeline and the released checkpoints expect)."""
        x = image.to(self.device, self.vae.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mode().float()

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> (B, 3, H, W) float32 in [0, 1]."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        x = self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor + shift).sample
        return ((x.float() + 1) / 2).clamp(0, 1)

    # ---- prediction ------------------------------------------------------------------------------
    def predict(self, z: torch.Tensor, step: Step, embeds: torch.Tensor,
                image_latents: torch.Tensor | None = None) -> torch.Tensor:
        """One model call at ``step`` (a :class:`Step` of :attr:`sampler`), counted; returns the
        sampler's prediction (DDIM: eps, whatever the model's prediction type), float32."""
        return self.sampler.prediction(self.model_output(z, step.t, embeds, image_latents), z.float(), step)

    def predict_eps(self, z: torch.Tensor, t: int, alpha: float, embeds: torch.Tensor,
                    image_latents: torch.Tensor | None = None) -> torch.Tensor:
        """One UNet call at timestep ``t`` on latents at cumulative alpha ``alpha``; returns eps
        (whatever the model's prediction type), counted. (:meth:`predict` is this for a sampler step.)"""
        return to_epsilon(self.model_output(z, t, embeds, image_latents), z.float(), alpha, self.prediction_type)

    def model_output(self, z: torch.Tensor, t: int, embeds: torch.Tensor,
                     image_latents: torch.Tensor | None = None) -> torch.Tensor:
        """One UNet call, counted; its raw output (the model's prediction type) in float32.

        ``z`` (B, C, h, w); ``embeds`` (B, L, D); ``image_latents`` (B, C', h, w) are concatenated
        to the input channels for image-conditioned (InstructPix2Pix) UNets. Gradients flow if the
        inputs require them. The result is float32.

        SDXL: the last row of ``embeds`` is the pooled embedding (module docstring); it goes to
        ``added_cond_kwargs`` with ``time_ids`` = (h, w, 0, 0, h, w) in pixels of ``z``'s image,
        diffusers' ``_get_add_time_ids`` with original size = target size and no crop.
        """
        self.unet_calls += 1
        x = z if image_latents is None else torch.cat([z, image_latents.to(z)], dim=1)
        extra = {}
        if self.pooled_dim:
            pooled = embeds[:, -1, : self.pooled_dim]
            embeds = embeds[:, :-1]
            h, w = z.shape[-2] * self.vae_scale, z.shape[-1] * self.vae_scale
            time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=self.dtype, device=z.device).expand(pooled.shape[0], -1)
            extra["added_cond_kwargs"] = {"text_embeds": pooled.to(self.dtype), "time_ids": time_ids}
        out = self.unet(x.to(self.dtype), t, encoder_hidden_states=embeds.to(self.dtype), **extra).sample
        return out.float()  # step math runs in float32 whatever the model's dtype


def finish_bundle(unet, vae, text_encoder, tokenizer, scheduler_config, name, device, dtype, text_encoder_2=None,
                  tokenizer_2=None, force_zeros_for_empty_prompt=False, vae_dtype=None) -> ModelBundle:
    """Move, cast, freeze and wrap components into a :class:`ModelBundle` (``vae_dtype``: the VAE's
    own precision when it differs from the networks', SDXL's float32 VAE)."""
    nets = [(unet, dtype), (vae, vae_dtype or dtype), (text_encoder, dtype)]
    if text_encoder_2 is not None:
        nets.append((text_encoder_2, dtype))
    for net, dt in nets:
        net.to(device=device)
        if next(net.parameters()).dtype != dt:  # cast only when needed (diffusers warns on no-op casts)
            net.to(dtype=dt)
        net.eval().requires_grad_(False)
    return ModelBundle(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=dict(scheduler_config),
        name=name,
        device=device,
        dtype=dtype,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
    )


def from_pipeline(pipe, name: str | None = None, dtype: torch.dtype | None = None) -> ModelBundle:
    """A bundle over a diffusers ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (or their
    InstructPix2Pix variants) the caller already holds: the same UNet, VAE, text encoder(s) and
    tokenizer(s), no weight loaded again, the scheduler's config as the sampler's. The networks are put
    in eval mode with gradients off (locedit optimises latents and embeddings, never weights) and stay
    on their device; ``dtype`` defaults to the UNet's."""
    unet = pipe.unet
    dtype = dtype or next(unet.parameters()).dtype
    device = next(unet.parameters()).device
    xl = getattr(pipe, "text_encoder_2", None) is not None
    extra = {}
    if xl:
        extra = dict(text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2,
                     force_zeros_for_empty_prompt=bool(pipe.config.get("force_zeros_for_empty_prompt", True)),
                     vae_dtype=pipe.vae.dtype)
    return finish_bundle(unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, dict(pipe.scheduler.config),
                         name or pipe.config.get("_name_or_path") or type(pipe).__name__, device, dtype,
                         **extra)
