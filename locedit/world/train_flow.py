"""shapes-flow: a small FLUX-architecture rectified-flow transformer trained on the shapes world.

    python -m locedit.world.train flow --vae locedit/models/shapes/vae --init-text locedit/models/shapes \\
        --out ~/.cache/locedit-train/shapes-flow --cache ~/.cache/locedit-train/cache --resume

The network is diffusers' ``FluxTransformer2DModel`` with small widths and depths: double-stream
(joint text-image) blocks, then single-stream blocks, rotary position ids over (text, row, column),
the VAE latent packed 2x2 into tokens (``patch_size`` 1 on the packed channels, as FLUX has it), no
distilled guidance embedding (``guidance_embeds=False``: the small model is trained with caption
dropout and sampled with true classifier-free guidance, FluxPipeline's ``true_cfg_scale``). The text
side is FLUX's: a CLIP text encoder whose pooled output conditions the modulation (initialised from
the shipped shapes text encoder) and a T5 encoder whose token states are the joint-attention text
stream (small, trained from scratch, with a word-level T5 tokenizer over the shapes vocabulary). The
VAE is the shipped shapes VAE, frozen, with ``shift_factor`` 0, so the cached training latents of the
UNet models are this model's latents too.

Training objective (rectified flow, Liu et al. 2023; Esser et al. 2024 Eq. 1-3): x_t = (1 - t) x_0 +
t eps, the network predicts the velocity eps - x_0; t is drawn logit-normal (SD3's m = 0, s = 1) and
shifted by FLUX's resolution-dependent shift exp(mu), mu = calculate_shift(image tokens), the same
shift FluxPipeline's scheduler applies when sampling. The folder written by ``assemble`` loads in
``diffusers.FluxPipeline.from_pretrained``.
"""

from __future__ import annotations

import json
import math
import string
import sys
import time
from pathlib import Path

import torch

from ..diffusion.flow import calculate_shift, image_ids, pack, unpack  # noqa: F401 (pack/unpack/image_ids: this module's names too)
from .scene import VOCABULARY
from .data import IMAGE_SIZE
from .trainloop import (MAX_TOKENS, LatentCache, diffusion_loop, encode_prompts, load_vae, pick_device, provenance,
                        read_json)

TEXT_DIM = 64
# FLUX's scheduler settings (FLUX.1-dev's scheduler_config.json): dynamic shift from the token count
FLOW_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                             max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
FLOW_ARCHS = {
    # f1: 4 double-stream + 8 single-stream blocks, width 160 (5 heads of 32), 7.0M parameters
    "f1": dict(num_layers=4, num_single_layers=8, attention_head_dim=32, num_attention_heads=5,
               axes_dims_rope=(8, 12, 12)),
}


def make_t5_tokenizer():
    """A T5 tokenizer (Unigram, as T5's) whose pieces spell each shapes word as one token; any other
    word falls back to letters and digits, so every prompt tokenizes."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, 0.0) for w in VOCABULARY]
    vocab += [(c, -10.0) for c in string.ascii_lowercase + string.digits + ".,"]
    tok = T5TokenizerFast(vocab=vocab, extra_ids=0)
    tok.model_max_length = MAX_TOKENS
    return tok


def make_t5_encoder(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=16, num_heads=4, d_ff=4 * TEXT_DIM,
                                   num_layers=3, feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0, relative_attention_num_buckets=16,
                                   relative_attention_max_distance=32))


def make_flow_transformer(arch: str = "f1", latent_channels: int = 4):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=4 * latent_channels, joint_attention_dim=TEXT_DIM,
                                  pooled_projection_dim=TEXT_DIM, guidance_embeds=False, **FLOW_ARCHS[arch])


def flow_shift_mu(tokens: int, config: dict = FLOW_SCHEDULER_CONFIG) -> float:
    """FLUX's mu for ``tokens`` image tokens (diffusers' ``calculate_shift``: linear in the count)."""
    return calculate_shift(tokens, config)


def shift_sigmas(t: torch.Tensor, mu: float) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's exponential time shift: e^mu / (e^mu + (1/t - 1))."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def _text(tokenizer, text_encoder, tokenizer_2, t5, prompts, device):
    """(T5 token states (B, MAX_TOKENS, TEXT_DIM), CLIP pooled (B, TEXT_DIM)), as FluxPipeline encodes."""
    pooled = text_encoder(tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                    return_tensors="pt").input_ids.to(device)).pooler_output
    states = encode_prompts(tokenizer_2, t5, prompts, device)
    return states, pooled


def _flow_loss(transformer, text_encoder, tokenizer, t5, tokenizer_2, device):
    side = IMAGE_SIZE // 4
    img_ids = image_ids(side // 2, side // 2).to(device)
    txt_ids = torch.zeros(MAX_TOKENS, 3, device=device)
    mu = flow_shift_mu((side // 2) ** 2)

    def loss_fn(batch, gen):
        z0, _, prompts = batch
        b = z0.shape[0]
        z0 = z0.to(device)
        t = shift_sigmas(torch.sigmoid(torch.randn(b, generator=gen)), mu).to(device)  # logit-normal, shifted
        noise = torch.randn(z0.shape, generator=gen).to(device)
        zt = (1 - t.view(b, 1, 1, 1)) * z0 + t.view(b, 1, 1, 1) * noise
        states, pooled = _text(tokenizer, text_encoder, tokenizer_2, t5, prompts, device)
        v = transformer(pack(zt), states, pooled, t, img_ids, txt_ids).sample
        mse = ((v.float() - pack(noise - z0)) ** 2).mean()
        return mse, mse, {}

    return loss_fn


def _init_flow(args, device):
    """(transformer, CLIP text encoder, CLIP tokenizer, T5 encoder, T5 tokenizer): fresh, or from a
    saved folder (``--init``); the fresh CLIP side starts from ``--init-text``'s text encoder."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    src = args.init or args.init_text
    clip = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", use_safetensors=True).float()
    tok = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer")
    if args.init:
        tr = FluxTransformer2DModel.from_pretrained(args.init, subfolder="transformer", use_safetensors=True).float()
        t5 = T5EncoderModel.from_pretrained(args.init, subfolder="text_encoder_2", use_safetensors=True).float()
        tok2 = T5TokenizerFast.from_pretrained(args.init, subfolder="tokenizer_2")
    else:
        tok2 = make_t5_tokenizer()
        torch.manual_seed(args.seed)
        tr, t5 = make_flow_transformer(args.arch), make_t5_encoder(tok2)
    return [m.to(device).train() if hasattr(m, "train") else m for m in (tr, clip, tok, t5, tok2)]


def train_flow(args) -> None:
    """Rectified-flow training of the transformer and both text encoders on cached latents; caption
    dropout ``--drop`` for classifier-free guidance; EMA, checkpoints and ``--resume`` as the UNets'."""
    device, out = pick_device(args.device), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vae = load_vae(args.vae, device)
    tr, clip, tok, t5, tok2 = _init_flow(args, device)
    cache = LatentCache(args.cache, vae, args.vae, device, args.cache_size)
    print(f"latent cache: {len(cache)} of {args.cache_size} scenes in {cache.folder}", file=sys.stderr, flush=True)
    _refill(cache, args, Path(args.out))
    print(f"transformer: {sum(p.numel() for p in tr.parameters()) / 1e6:.2f}M parameters", file=sys.stderr, flush=True)

    def batch(rng, gen):
        cache.fill(args.cache_fill)
        z, caps = cache.batch(gen, args.batch)
        drop = torch.rand(len(caps), generator=gen) < args.drop
        return z, None, ["" if d else c for c, d in zip(caps, drop.tolist())]

    def save_fn(folder):
        tr.save_pretrained(folder / "transformer", safe_serialization=True)
        clip.save_pretrained(folder / "text_encoder", safe_serialization=True)
        tok.save_pretrained(folder / "tokenizer")
        t5.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
        tok2.save_pretrained(folder / "tokenizer_2")

    evaluate = _flow_curve(args, (tr, clip, tok, t5, tok2), vae, out) if args.eval_every else None
    diffusion_loop(args, {"transformer": tr, "text_encoder": clip, "text_encoder_2": t5},
                    _flow_loss(tr, clip, tok, t5, tok2, device), save_fn, batch, out, evaluate)


def _refill(cache: LatentCache, args, out: Path) -> None:
    """Fill the cache as far as the run had filled it: ``4 * batch`` scenes at the start, then
    ``--cache-fill`` before each step's batch; on ``--resume`` up to the checkpoint's step, in the
    same chunks, so a resumed run draws exactly the batches the uninterrupted run draws."""
    step = int(read_json(out / "progress.json").get("step", 0)) if args.resume and (out / "checkpoint.pt").exists() else 0
    target = min(args.cache_size, args.batch * 4 + args.cache_fill * step)
    if len(cache) < args.batch * 4:
        cache.fill(args.batch * 4 - len(cache))
    while len(cache) < target:
        cache.fill(min(args.cache_fill, target - len(cache)))


def flux_pipeline(transformer, text_encoder, tokenizer, text_encoder_2, tokenizer_2, vae):
    """diffusers' own FluxPipeline over these components (the reference sampler for the gates)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    if vae.config.get("shift_factor") is None:
        vae.register_to_config(shift_factor=0.0)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULER_CONFIG), vae=vae,
                        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer)


def load_flow_pipeline(folder: str, vae: str | None = None):
    """diffusers' FluxPipeline over a shapes-flow folder: a shipped one (``model_index.json``), or a
    training run's weights (``ema/``: transformer, text encoders, tokenizers) with the ``vae`` given."""
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    if Path(folder, "model_index.json").exists():
        return FluxPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    if vae is None:
        raise SystemExit(f"{folder} is a training run's weights: give the VAE it was trained on (--flow-vae)")
    return flux_pipeline(
        FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", use_safetensors=True).float().eval(),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", use_safetensors=True).float().eval(),
        CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_2", use_safetensors=True).float().eval(),
        T5TokenizerFast.from_pretrained(folder, subfolder="tokenizer_2"),
        AutoencoderKL.from_pretrained(vae, use_safetensors=True).float().eval())


@torch.no_grad()
def gate_flow_t2i(pipe, n: int = 200, steps: int = 28, guidance: float = 4.0, seed: int = 0, batch: int = 25) -> dict:
    """Gate F1: the oracle reads each held-out caption's objects in FluxPipeline's sample (true CFG)."""
    from .gates import held_out_scenes, oracle_counts

    scenes = held_out_scenes(n, offset=10_000)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    objects = textures = backgrounds = 0
    for i in range(0, n, batch):
        chunk = scenes[i: i + batch]
        imgs = pipe([s.caption() for s in chunk], negative_prompt=[""] * len(chunk), true_cfg_scale=guidance,
                    height=IMAGE_SIZE, width=IMAGE_SIZE, num_inference_steps=steps, max_sequence_length=MAX_TOKENS,
                    generator=g, output_type="pt").images
        counts = oracle_counts(chunk, imgs)
        objects, textures, backgrounds = objects + counts[0], textures + counts[1], backgrounds + counts[2]
    return {"f1_oracle": objects / n, "f1_oracle_with_texture": textures / n, "f1_background": backgrounds / n, "n": n}


@torch.no_grad()
def gate_flow_inversion(pipe, n: int = 50, steps: int = 28) -> dict:
    """Gate F2: Euler inversion of each held-out scene under its caption, then Euler sampling back, both
    at guidance 1 (no CFG, no distilled guidance): PSNR of the decoded result against the scene; and
    the VAE's round trip alone on the same scenes, what an exact inversion would give back."""
    import numpy as np

    from ..diffusion import flow
    from ..diffusion.flow_model import from_flow_pipeline
    from .gates import held_out_scenes, psnr
    from .data import to_tensor
    from .scene import render

    bundle = from_flow_pipeline(pipe)
    bundle.max_sequence_length = MAX_TOKENS
    values, bound = [], []
    for s in held_out_scenes(n, offset=20_000):
        x = to_tensor([render(s, IMAGE_SIZE)[0]]).to(bundle.device)
        z = bundle.encode_image(x)
        bound.append(psnr(bundle.decode_latents(z), x))
        text = bundle.encode_text([s.caption()])
        sigmas = bundle.sigmas(steps, *z.shape[-2:])
        up = flow.inversion_sigmas(sigmas)
        for k in range(steps):
            z = flow.euler_step(z, bundle.velocity(z, up[k], text), up[k], up[k + 1])
        for k in range(steps):
            z = flow.euler_step(z, bundle.velocity(z, sigmas[k], text), sigmas[k], sigmas[k + 1])
        values.append(psnr(bundle.decode_latents(z), x))
    return {"f2_inversion_psnr": float(np.mean(values)), "f2_vae_bound_psnr": float(np.mean(bound)), "n": n}


@torch.no_grad()
def gate_flow_edit(pipe, n: int = 100, steps: int = 28) -> dict:
    """Gate F3: FlowEdit (the paper's FLUX settings at ``steps``: n_max 24 of 28 scaled, scales 1.5 / 5.5
    as FLUX's distilled guidance, which a model without the guidance embedding ignores) on held-out
    colour edits, no mask: (the oracle sees the edit, PSNR outside the edited object)."""
    import random

    import numpy as np

    from ..flow import FlowEditOptions
    from ..flow.flowedit import flowedit
    from ..diffusion.flow_model import from_flow_pipeline
    from .data import to_tensor
    from .edits import sample_edit
    from .gates import HELD_OUT_SEED, _to_uint8, change_seen, psnr, read_scene

    bundle = from_flow_pipeline(pipe)
    bundle.max_sequence_length = MAX_TOKENS
    rng = random.Random(HELD_OUT_SEED + 40_000)
    options = FlowEditOptions(steps=steps, n_max=round(24 * steps / 28))
    seen, outside = 0, []
    for e in [sample_edit(rng, "colour") for _ in range(n)]:
        src = to_tensor([e.render_source(IMAGE_SIZE)]).to(bundle.device)
        z = flowedit(bundle, bundle.encode_image(src), e.source_caption, e.target_caption, options)
        edited = bundle.decode_latents(z).cpu()
        seen += change_seen(read_scene(_to_uint8(edited)), e)
        outside.append(psnr(edited, src.cpu(), torch.from_numpy(~e.mask(IMAGE_SIZE))))
    return {"f3_flowedit_oracle": seen / n, "f3_flowedit_outside_psnr": float(np.mean(outside)), "n": n}


def _flow_edit_gate(pipe, n: int, steps: int, run, prefix: str, seed_offset: int) -> dict:
    """A masked flow editor on held-out colour edits: ``run(bundle, edit, z)`` returns the edited latent;
    (the oracle sees the edit, PSNR outside the edited object)."""
    import random

    import numpy as np

    from ..diffusion.flow_model import from_flow_pipeline
    from .data import to_tensor
    from .edits import sample_edit
    from .gates import HELD_OUT_SEED, _to_uint8, change_seen, psnr, read_scene

    bundle = from_flow_pipeline(pipe)
    bundle.max_sequence_length = MAX_TOKENS
    rng = random.Random(HELD_OUT_SEED + seed_offset)
    seen, outside = 0, []
    for e in [sample_edit(rng, "colour") for _ in range(n)]:
        src = to_tensor([e.render_source(IMAGE_SIZE)]).to(bundle.device)
        edited = bundle.decode_latents(run(bundle, e, bundle.encode_image(src))).cpu()
        seen += change_seen(read_scene(_to_uint8(edited)), e)
        outside.append(psnr(edited, src.cpu(), torch.from_numpy(~e.mask(IMAGE_SIZE))))
    return {f"{prefix}_oracle": seen / n, f"{prefix}_outside_psnr": float(np.mean(outside)), "n": n}


def gate_kv_edit(pipe, n: int = 100, steps: int = 28) -> dict:
    """Gate F4: KV-Edit with the edited object's mask (its demo's settings at ``steps``: skip 4 of 28
    scaled, guidance 1.5 / 5.5 - which act on no model without FLUX's guidance embedding, so shapes-flow
    inverts and samples on its conditional velocity alone) on held-out colour edits."""
    from ..flow import KVEditOptions
    from ..flow.kvedit import kv_edit, latent_mask

    options = KVEditOptions(steps=steps, skip=round(4 * steps / 28))

    def run(bundle, e, z):
        mask = torch.from_numpy(e.mask(IMAGE_SIZE)).float()[None, None]
        return kv_edit(bundle, z, e.source_caption, e.target_caption, options, mask=latent_mask(mask, *z.shape[-2:]))

    return _flow_edit_gate(pipe, n, steps, run, "f4_kv_edit", 41_000)


def gate_blend_words(pipe, n: int = 100, steps: int = 28) -> dict:
    """Gate F5: FlowEdit (F3's settings) inside the ``--blend-words`` mask of the edited object's word
    in the source and target captions (P2P's rule on the joint-attention maps)."""
    from ..flow import FlowEditOptions
    from ..flow.flowedit import flowedit
    from ..flow.maps import blend_words_mask

    options = FlowEditOptions(steps=steps, n_max=round(24 * steps / 28))

    def run(bundle, e, z):
        src_word, tgt_word = e.words()[0]
        mask = blend_words_mask(bundle, z, [(e.source_caption, src_word), (e.target_caption, tgt_word)])
        return flowedit(bundle, z, e.source_caption, e.target_caption, options, mask=mask)

    return _flow_edit_gate(pipe, n, steps, run, "f5_blend_words", 42_000)


def _flow_curve(args, models, vae, out: Path):
    """The learning curve's point: gate F1 on ``--eval-n`` held-out captions with the EMA weights."""
    def evaluate(step):
        tr, clip, tok, t5, tok2 = models
        pipe = flux_pipeline(tr, clip, tok, t5, tok2, vae)
        for m in (tr, clip, t5):
            m.eval()
        t = time.time()
        try:
            fig = gate_flow_t2i(pipe, n=args.eval_n, steps=args.eval_steps)
        finally:
            for m in (tr, clip, t5):
                m.train()
        line = json.dumps({"step": step, **fig, "eval_seconds": round(time.time() - t, 1)})
        print("curve " + line, file=sys.stderr, flush=True)
        with open(out / "curve.jsonl", "a") as f:
            f.write(line + "\n")

    return evaluate


def assemble_flow(src: Path, vae_path: Path, folder: Path) -> None:
    """Write ``folder`` as a FluxPipeline folder in fp16 from the weights in ``src`` (a training
    output or its ``ema``) and the shapes VAE (``shift_factor`` 0)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    import diffusers

    vae = AutoencoderKL.from_pretrained(vae_path, use_safetensors=True)
    vae.register_to_config(shift_factor=0.0)
    vae.to(torch.float16).save_pretrained(folder / "vae", safe_serialization=True)
    for sub, cls in (("transformer", FluxTransformer2DModel), ("text_encoder", CLIPTextModel),
                     ("text_encoder_2", T5EncoderModel)):
        cls.from_pretrained(src, subfolder=sub, use_safetensors=True).to(torch.float16).save_pretrained(
            folder / sub, safe_serialization=True)
    CLIPTokenizer.from_pretrained(src, subfolder="tokenizer").save_pretrained(folder / "tokenizer")
    T5TokenizerFast.from_pretrained(src, subfolder="tokenizer_2").save_pretrained(folder / "tokenizer_2")
    FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULER_CONFIG).save_config(folder / "scheduler")
    index = {"_class_name": "FluxPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": [None, None], "image_encoder": [None, None],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
             "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    # image_size: the side it was trained at, which locedit's loader reads (FluxPipeline's own default is 1024)
    meta = {"image_size": IMAGE_SIZE, "vae": provenance(Path(vae_path)), "diffusion": provenance(Path(src))}
    (folder / "training.json").write_text(json.dumps(meta, indent=2))
    progress = read_json(Path(src) / "progress.json")
    print(f"wrote {folder} (step {progress.get('step', '?')})", file=sys.stderr)
