"""Tiny random FLUX and SD3 pipelines built in code (the flow-model tests' fixtures and the FLUX peers'
model, ``bench/peers/flux_run.py``), with the bundled shapes CLIP tokenizer and the shapes-flow
word-level T5 tokenizer: nothing is downloaded."""

import torch

from .names import BUNDLED_DIR


def _clip(seed, projection: bool, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_act="gelu")
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _vae(seed, latent_channels: int = 4):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=32,
                         scaling_factor=0.6, shift_factor=0.1).eval()


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(BUNDLED_DIR / "shapes" / "tokenizer"))


def tiny_flux(seed: int = 0, guidance_embeds: bool = True, num_layers: int = 1, num_single_layers: int = 1,
              latent_channels: int = 4):
    """FLUX's architecture at width 32 (2 heads of 16, rotary axes 4 + 6 + 6), ``latent_channels``
    packed 2x2 (FLUX.1's VAE has 16); ``num_layers`` double-stream and ``num_single_layers``
    single-stream blocks."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from ..world.train_flow import make_t5_tokenizer

    t5_tok = make_t5_tokenizer()
    torch.manual_seed(seed)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, num_heads=2, d_ff=64, num_layers=1,
                                 dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    torch.manual_seed(seed + 1)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4 * latent_channels, num_layers=num_layers,
                                         num_single_layers=num_single_layers,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 6, 6)).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=_vae(seed + 2, latent_channels), text_encoder=_clip(seed + 3, False),
                        tokenizer=_clip_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3(seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=16, pooled_projection_dim=64, out_channels=4,
                                        pos_embed_max_size=32).eval()
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=_vae(seed + 1), text_encoder=_clip(seed + 2, True),
                                    tokenizer=_clip_tokenizer(), text_encoder_2=_clip(seed + 3, True),
                                    tokenizer_2=_clip_tokenizer(), text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe
