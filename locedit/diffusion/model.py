"""The model bundle: UNet, VAE, text encoder, tokenizer and scheduler config, with the few
operations every method needs (encode text, encode/decode images, predict noise).

Images in the core are float tensors (B, 3, H, W) in [0, 1]; latents are float32 (B, C, h, w)
already multiplied by ``vae.config.scaling_factor``. The networks may run in fp16/bf16; every
step, loss and optimisation in locedit runs in float32 and casts at the network's door.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..errors import PromptError
from .ddim import DDIMSchedule, to_epsilon


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

    def schedule(self, num_steps: int) -> DDIMSchedule:
        return DDIMSchedule.from_config(self.scheduler_config, num_steps)

    # ---- text ----------------------------------------------------------------------------------
    def token_ids(self, prompt: str) -> list[int]:
        """Token ids of ``prompt`` with start and end tokens, unpadded; refuses over-long prompts."""
        ids = self.tokenizer(prompt, truncation=False).input_ids
        if len(ids) > self.max_tokens:
            raise PromptError(
                f"prompt is {len(ids) - 2} tokens, over this model's limit of {self.max_tokens - 2}: {prompt[:60]!r}"
            )
        return list(ids)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(B, L, D) float32 text embeddings, padded to the tokenizer's max length."""
        for p in prompts:
            self.token_ids(p)
        tok = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt"
        )
        out = self.text_encoder(tok.input_ids.to(self.device))[0]
        return out.float()

    def token_embedding_table(self) -> torch.nn.Embedding:
        """The text encoder's input token-embedding table (never modified by locedit)."""
        return self.text_encoder.get_input_embeddings()

    def encode_text_with_tokens(self, prompt: str, vectors: dict[int, torch.Tensor]) -> torch.Tensor:
        """(1, L, D) embedding of ``prompt`` with the input token embeddings at the given positions
        replaced by ``vectors`` (each (D_in,)); gradients flow to the vectors only.

        Uses a forward hook on the token-embedding table, removed in ``finally``; the table itself
        is never written (LocInv / dynamic prompt learning learn such per-step token vectors).
        """
        ids = self.tokenizer([prompt], padding="max_length", max_length=self.max_tokens, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        table = self.token_embedding_table()

        def hook(module, inputs, output):
            output = output.clone()
            for pos, vec in vectors.items():
                output[:, pos] = vec.to(output)
            return output

        handle = table.register_forward_hook(hook)
        try:
            return self.text_encoder(ids)[0].float()
        finally:
            handle.remove()

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
        x = (image.to(self.device, self.dtype) * 2 - 1)
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
        x = image.to(self.device, self.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mode().float()

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> (B, 3, H, W) float32 in [0, 1]."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        x = self.vae.decode(z.to(self.dtype) / self.vae.config.scaling_factor + shift).sample
        return ((x.float() + 1) / 2).clamp(0, 1)

    # ---- noise prediction ------------------------------------------------------------------------
    def predict_eps(self, z: torch.Tensor, t: int, alpha: float, embeds: torch.Tensor,
                    image_latents: torch.Tensor | None = None) -> torch.Tensor:
        """One UNet call; returns eps (whatever the model's prediction type), counted.

        ``z`` (B, C, h, w); ``embeds`` (B, L, D); ``image_latents`` (B, C', h, w) are concatenated
        to the input channels for image-conditioned (InstructPix2Pix) UNets. Gradients flow if the
        inputs require them. The result is float32.
        """
        self.unet_calls += 1
        x = z if image_latents is None else torch.cat([z, image_latents.to(z)], dim=1)
        out = self.unet(x.to(self.dtype), t, encoder_hidden_states=embeds.to(self.dtype)).sample
        # step math runs in float32 whatever the model's dtype
        return to_epsilon(out.float(), z.float(), alpha, self.prediction_type)
