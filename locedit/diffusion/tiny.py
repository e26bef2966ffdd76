"""Tiny random models with Stable Diffusion's structure, built in code.

They exercise every code path (cross-attention at two resolutions, CFG, VAE scaling) in
milliseconds on a CPU, so tests and the engine demo need no download. Their outputs are noise:
they say nothing about editing quality.
"""

from __future__ import annotations

import torch

# SD v1.x's DDIM settings (scaled_linear 0.00085..0.012, no clipping, set_alpha_to_one False)
SD_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

TINY_WORDS = (
    "a photo of cat dog bird car tree house red green blue yellow white black big small "
    "sitting on the grass with hat in striped plain circle square triangle diamond background gray white "
    "orange purple an and"
).split()


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges learned on ``words`` until each is one symbol (Sennrich et al. 2016).

    Deterministic: the most frequent adjacent pair wins, ties by lexicographic order. Applying the
    merges in rank order (what BPE does at inference) re-traces the training segmentation, so every
    word comes out as a single token.
    """
    from collections import Counter

    seqs = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(p for seq in seqs for p in zip(seq, seq[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for k, seq in enumerate(seqs):
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[k] = out


def word_vocab(words) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style BPE ``(vocab, merges)`` that spell each of ``words`` as one token: the start and
    end tokens, CLIP's byte-level alphabet (with and without the end-of-word mark), then the learned
    merges (:func:`_learn_merges`). What :func:`word_tokenizer` builds its tokenizer from, and what a
    ``vocab.json`` / ``merges.txt`` pair written for any CLIPTokenizer version holds."""
    from tokenizers import pre_tokenizers

    words = sorted(dict.fromkeys(w.lower() for w in words))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for tok in ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(tok, len(vocab))
    merges = _learn_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def word_tokenizer(words, model_max_length: int = 77):
    """A CLIP tokenizer whose BPE spells each of ``words`` as one token (deterministically).

    Any other text still tokenizes, down to single bytes of CLIP's byte-level alphabet.
    """
    from transformers import CLIPTokenizer

    vocab, merges = word_vocab(words)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = model_max_length
    return tok


def tiny_components(seed: int = 0, image_size: int = 64, max_tokens: int = 32, prediction_type: str = "epsilon"):
    """(unet, vae, text_encoder, tokenizer, scheduler_config), random but seeded.

    VAE: 3 blocks (downsampling 4), 4 latent channels; UNet: blocks (32, 64) with
    cross-attention in both, so maps exist at two resolutions (latent/1 and latent/2).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = word_tokenizer(TINY_WORDS, model_max_length=max_tokens)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=image_size,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=max_tokens,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=image_size // 4,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
    config = dict(SD_SCHEDULER_CONFIG, prediction_type=prediction_type)
    return unet, vae, text_encoder, tokenizer, config


def tiny_bundle(seed: int = 0, device="cpu", dtype=torch.float32, **kwargs):
    from .model import finish_bundle

    unet, vae, te, tok, cfg = tiny_components(seed=seed, **kwargs)
    return finish_bundle(unet, vae, te, tok, cfg, name="tiny-random", device=torch.device(device), dtype=dtype)


def sd15_components(seed: int = 0, image_size: int = 512, in_channels: int = 4, words=TINY_WORDS):
    """Stable Diffusion 1.x's architecture with random weights: (unet, vae, text_encoder, tokenizer,
    scheduler_config).

    diffusers' default UNet2DConditionModel config is SD 1.x's (four levels 320/640/1280/1280,
    cross-attention 768, 8 heads); the VAE and the 12-layer CLIP text encoder are SD's sizes; only
    the tokenizer is a word-level one (:func:`word_tokenizer`, 77 tokens) since CLIP's vocabulary
    cannot be shipped. The compute and memory are those of the real model at ``image_size``; the
    images are noise. ``in_channels=8`` gives InstructPix2Pix's UNet.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = word_tokenizer(words, model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(sample_size=image_size // 8, in_channels=in_channels, cross_attention_dim=768)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, latent_channels=4, sample_size=image_size,
        )
        te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                          pad_token_id=tok.pad_token_id))
    return unet, vae, te, tok, dict(SD_SCHEDULER_CONFIG)


# SDXL base's scheduler (Euler discrete over SD's betas; locedit walks the same timesteps with DDIM)
SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def tiny_sdxl_components(seed: int = 0, image_size: int = 64, max_tokens: int = 32, in_channels: int = 4):
    """SDXL's structure, tiny and random: ``(unet, vae, text_encoder, text_encoder_2, tokenizer,
    tokenizer_2, scheduler_config)``.

    As SDXL base (Podell et al. 2023): two CLIP text encoders whose penultimate states are
    concatenated (32 + 32 = the UNet's cross-attention width 64), the second with a projection
    (the pooled embedding, 32), a UNet whose first level has no attention and whose deeper levels
    have 1 and 2 transformer blocks (SDXL: none, 2, 10), ``addition_embed_type="text_time"`` with
    6 time ids, linear projections in the transformers; the second tokenizer pads with ``!`` as
    SDXL's OpenCLIP one does. ``in_channels=8`` gives SDXL InstructPix2Pix's UNet.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = word_tokenizer(TINY_WORDS, model_max_length=max_tokens)
    tokenizer_2 = word_tokenizer(TINY_WORDS, model_max_length=max_tokens)
    tokenizer_2.pad_token = "!"

    def text_config(tok, **kw):
        return CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, max_position_embeddings=max_tokens, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32),
                            layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=image_size,
                            scaling_factor=0.13025, force_upcast=True)
        text_encoder = CLIPTextModel(text_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer_2, projection_dim=32))
        unet = UNet2DConditionModel(
            sample_size=image_size // 4, in_channels=in_channels, out_channels=4,
            block_out_channels=(32, 32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 8), use_linear_projection=True,
            cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=8,
        )
    return unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, dict(SDXL_SCHEDULER_CONFIG)


def tiny_sdxl_bundle(seed: int = 0, device="cpu", dtype=torch.float32, **kwargs):
    from .model import finish_bundle

    unet, vae, te, te2, tok, tok2, cfg = tiny_sdxl_components(seed=seed, **kwargs)
    return finish_bundle(unet, vae, te, tok, cfg, name="tiny-sdxl", device=torch.device(device), dtype=dtype,
                         text_encoder_2=te2, tokenizer_2=tok2, force_zeros_for_empty_prompt=True)


def tiny_sd2_components(seed: int = 0, image_size: int = 64, max_tokens: int = 32):
    """SD 2.x's structure, tiny and random (``(unet, vae, text_encoder, tokenizer, scheduler_config)``):
    v-prediction with "leading" spacing as stable-diffusion-2(-1)'s 768 px model, linear projections
    and per-level head counts in the UNet, a tokenizer that pads with ``!`` (OpenCLIP's)."""
    from diffusers import UNet2DConditionModel

    unet, vae, te, tok, cfg = tiny_components(seed=seed, image_size=image_size, max_tokens=max_tokens,
                                              prediction_type="v_prediction")
    tok.pad_token = "!"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel.from_config({**unet.config, "use_linear_projection": True,
                                                 "attention_head_dim": (4, 8), "upcast_attention": True})
    return unet, vae, te, tok, cfg


def sdxl_components(seed: int = 0, words=TINY_WORDS):
    """SDXL base 1.0's architecture with random weights: ``(unet, vae, text_encoder, text_encoder_2,
    tokenizer, tokenizer_2, scheduler_config)``.

    The UNet (2.6B parameters: 320/640/1280 channels, 0/2/10 transformer blocks per level, 2048-wide
    cross-attention, text_time added embedding of 256 x 6 time ids + 1280 pooled), CLIP ViT-L
    (12 layers, 768) and OpenCLIP bigG (32 layers, 1280, projection 1280), and SD's VAE with
    SDXL's scaling 0.13025: the compute and memory of the real model; the images are noise. Build
    under ``torch.set_default_dtype(torch.bfloat16)`` to hold the weights in half the memory. The
    tokenizers are word-level (:func:`word_tokenizer`, 77 tokens) since CLIP's vocabulary cannot
    be shipped.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = word_tokenizer(words, model_max_length=77)
    tok2 = word_tokenizer(words, model_max_length=77)
    tok2.pad_token = "!"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
            cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                            sample_size=1024, scaling_factor=0.13025, force_upcast=True)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                          hidden_act="quick_gelu", projection_dim=768, bos_token_id=tok.bos_token_id,
                                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok2), hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
            num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
            bos_token_id=tok2.bos_token_id, eos_token_id=tok2.eos_token_id, pad_token_id=tok2.pad_token_id))
    return unet, vae, te, te2, tok, tok2, dict(SDXL_SCHEDULER_CONFIG)
