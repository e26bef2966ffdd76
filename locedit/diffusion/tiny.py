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
    from .loading import finish_bundle

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
