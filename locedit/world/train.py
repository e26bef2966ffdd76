"""Train the bundled shapes models (seeded, reproducible, CPU or GPU).

    python -m locedit.world.train vae      --out runs/vae      --steps 3000
    python -m locedit.world.train t2i      --out runs/t2i      --vae runs/vae --steps 6000
    python -m locedit.world.train instruct --out runs/instruct --vae runs/vae --steps 6000
    python -m locedit.world.train assemble --vae runs/vae --t2i runs/t2i --instruct runs/instruct \
        --dest locedit/models

Data is drawn on the fly from the shapes world with seeds below HELD_OUT_SEED; evaluation scenes
use seeds from HELD_OUT_SEED up, so no evaluation scene is ever trained on. Checkpoints are
diffusers folders written every ``--save-every`` steps (training resumes from one with
``--resume``). ``assemble`` writes the fp16 safetensors folders the package ships.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..diffusion.tiny import SD_SCHEDULER_CONFIG, word_tokenizer
from .edits import EDIT_KINDS, sample_edit
from .scene import VOCABULARY, render, sample_scene

HELD_OUT_SEED = 1_000_000
IMAGE_SIZE = 64
MAX_TOKENS = 32
TEXT_DIM = 64


# ---- architectures ------------------------------------------------------------------------------------
def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def make_unet(in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=in_channels, out_channels=4,
        block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=16,
    )


def make_tokenizer():
    return word_tokenizer(VOCABULARY, model_max_length=MAX_TOKENS)


def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


# ---- data -----------------------------------------------------------------------------------------------
def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) list -> (B, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def scene_batch(rng: random.Random, n: int):
    scenes = [sample_scene(rng) for _ in range(n)]
    return to_tensor([render(s, IMAGE_SIZE)[0] for s in scenes]), [s.caption() for s in scenes]


def edit_batch(rng: random.Random, n: int):
    edits = [sample_edit(rng) for _ in range(n)]
    src = to_tensor([e.render_source(IMAGE_SIZE) for e in edits])
    tgt = to_tensor([e.render_target(IMAGE_SIZE) for e in edits])
    return src, tgt, [e.instruction for e in edits]


# ---- helpers ---------------------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def _log(out: Path, step: int, **values) -> None:
    line = json.dumps({"step": step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}})
    print(line, file=sys.stderr, flush=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(line + "\n")


def _warmup_cosine(opt, steps: int, warmup: int = 100):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of the peak."""
    import math

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _encode(tokenizer, text_encoder, prompts, device):
    ids = tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(device))[0]


def _alphas(device):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(SD_SCHEDULER_CONFIG).alphas_cumprod.to(device)


def _load_vae(path: str, device):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(path, use_safetensors=True).to(device).eval().requires_grad_(False)
    return vae


@torch.no_grad()
def _latents(vae, x, device):
    return vae.encode(x.to(device) * 2 - 1).latent_dist.mean * vae.config.scaling_factor


# ---- trainers ---------------------------------------------------------------------------------------------
def train_vae(args) -> None:
    """Reconstruction (L1 + MSE) with a small KL term; sets scaling_factor to 1 / latent std."""
    device, out = _device(args.device), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    if args.init:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.init, use_safetensors=True).float().to(device).train()
    else:
        vae = make_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    sched = _warmup_cosine(opt, args.steps)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        x, _ = scene_batch(rng, args.batch)
        x = x.to(device) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + args.kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == args.steps:
            psnr = 10 * torch.log10(4.0 / F.mse_loss(rec.detach().clamp(-1, 1), x)).item()
            _log(out, step, loss=loss.item(), psnr=psnr, seconds=time.time() - t0)
        if args.save_every and step % args.save_every == 0:
            vae.save_pretrained(out / "last", safe_serialization=True)
    with torch.no_grad():
        x, _ = scene_batch(random.Random(args.seed + 1), 256)
        z = torch.cat([vae.encode(c.to(device) * 2 - 1).latent_dist.mean for c in x.split(64)])
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(out, safe_serialization=True)
    (out / "train.json").write_text(json.dumps({**vars(args), "seconds": time.time() - t0, "device": str(device)}))


def _diffusion_loop(args, unet, text_encoder, tokenizer, vae, device, batch_fn, out: Path) -> None:
    alphas = _alphas(device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    sched = _warmup_cosine(opt, args.steps)
    ema = [p.detach().clone() for p in params]
    t0 = time.time()
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        z0, cond_in, prompts = batch_fn()
        b = z0.shape[0]
        t = torch.randint(0, len(alphas), (b,), generator=gen).to(device)
        noise = torch.randn(z0.shape, generator=gen).to(device)
        a = alphas[t].view(b, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        emb = _encode(tokenizer, text_encoder, prompts, device)
        x = zt if cond_in is None else torch.cat([zt, cond_in], 1)
        pred = unet(x, t, encoder_hidden_states=emb).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for e, p in zip(ema, params):
                e.mul_(d).add_(p.detach(), alpha=1 - d)
        if step % args.log_every == 0 or step == args.steps:
            _log(out, step, loss=loss.item(), lr=sched.get_last_lr()[0], seconds=time.time() - t0)
        if args.save_every and step % args.save_every == 0:
            _save_diffusion(out / "last", unet, text_encoder, tokenizer, ema, params)
    _save_diffusion(out, unet, text_encoder, tokenizer, ema, params)
    (out / "train.json").write_text(json.dumps({**vars(args), "seconds": time.time() - t0, "device": str(device)}))


def _save_diffusion(folder: Path, unet, text_encoder, tokenizer, ema, params) -> None:
    """Save with EMA weights swapped in, then swap the live weights back."""
    live = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    try:
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(folder / "tokenizer")
    finally:
        with torch.no_grad():
            for p, v in zip(params, live):
                p.copy_(v)


def widen_input(unet, in_channels: int):
    """A copy of ``unet`` taking ``in_channels`` inputs: the first convolution keeps its weights for
    the original channels and gets zero weights for the new ones, so the copy computes exactly what
    ``unet`` did until training teaches it to use them. This is how InstructPix2Pix (Brooks et al.
    2023, Sec. 3.2) starts from a text-to-image checkpoint."""
    from diffusers import UNet2DConditionModel

    old = unet.config.in_channels
    wide = UNet2DConditionModel.from_config({**unet.config, "in_channels": in_channels})
    state = unet.state_dict()
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], in_channels - old, *w.shape[2:])], dim=1)
    wide.load_state_dict(state)
    return wide.to(w.dtype)


def _init_models(args, tokenizer, in_channels: int, device):
    """Fresh text encoder and UNet, or the weights of a saved folder (``--init``) to continue from."""
    if args.init:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        te = CLIPTextModel.from_pretrained(args.init, subfolder="text_encoder", use_safetensors=True).float()
        unet = UNet2DConditionModel.from_pretrained(args.init, subfolder="unet", use_safetensors=True).float()
        if unet.config.in_channels == 4 and in_channels == 8:
            unet = widen_input(unet, in_channels)
        elif unet.config.in_channels != in_channels:
            raise SystemExit(f"--init {args.init}: UNet has {unet.config.in_channels} input channels, not {in_channels}")
    else:
        te, unet = make_text_encoder(tokenizer), make_unet(in_channels)
    return te.to(device).train(), unet.to(device).train()


def _prepare(args, in_channels: int):
    """Seeded set-up shared by the diffusion trainers: (device, out, rng, vae, tokenizer, text encoder, unet)."""
    device, out = _device(args.device), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    vae = _load_vae(args.vae, device)
    tok = make_tokenizer()
    te, unet = _init_models(args, tok, in_channels, device)
    return device, out, rng, vae, tok, te, unet


def train_t2i(args) -> None:
    """Text-to-image: epsilon prediction, SD's scaled-linear schedule, caption dropout for CFG."""
    device, out, rng, vae, tok, te, unet = _prepare(args, in_channels=4)

    def batch():
        x, caps = scene_batch(rng, args.batch)
        caps = ["" if rng.random() < args.drop else c for c in caps]
        return _latents(vae, x, device), None, caps

    _diffusion_loop(args, unet, te, tok, vae, device, batch, out)


def train_instruct(args) -> None:
    """InstructPix2Pix (Brooks et al. 2023): UNet input = [noisy target latent, source latent];
    the instruction and the image conditioning are each dropped 5% of the time, both together 5%."""
    device, out, rng, vae, tok, te, unet = _prepare(args, in_channels=8)

    def batch():
        src, tgt, instr = edit_batch(rng, args.batch)
        # the image condition is the unscaled posterior mode, as InstructPix2Pix checkpoints use
        with torch.no_grad():
            zs = vae.encode(src.to(device) * 2 - 1).latent_dist.mode()
        zt = _latents(vae, tgt, device)
        for i in range(len(instr)):
            r = rng.random()
            if r < args.drop:
                instr[i] = ""
            elif r < 2 * args.drop:
                zs[i] = 0
            elif r < 3 * args.drop:
                instr[i], zs[i] = "", 0
        return zt, zs, instr

    _diffusion_loop(args, unet, te, tok, vae, device, batch, out)


def assemble(args) -> None:
    """Write the shipped diffusers folders (fp16 safetensors) into ``--dest``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    dest = Path(args.dest)
    vae = AutoencoderKL.from_pretrained(args.vae, use_safetensors=True)
    for name, src in (("shapes", args.t2i), ("shapes-instruct", args.instruct)):
        if not src:
            continue
        folder = dest / name
        vae.to(torch.float16).save_pretrained(folder / "vae", safe_serialization=True)
        UNet2DConditionModel.from_pretrained(src, subfolder="unet", use_safetensors=True).to(torch.float16).save_pretrained(
            folder / "unet", safe_serialization=True)
        CLIPTextModel.from_pretrained(src, subfolder="text_encoder", use_safetensors=True).to(torch.float16).save_pretrained(
            folder / "text_encoder", safe_serialization=True)
        CLIPTokenizer.from_pretrained(src, subfolder="tokenizer").save_pretrained(folder / "tokenizer")
        DDIMScheduler.from_config(SD_SCHEDULER_CONFIG).save_config(folder / "scheduler")
        meta = {}
        for part, path in (("vae", args.vae), ("diffusion", src)):
            info = Path(path) / "train.json"
            if info.exists():
                meta[part] = json.loads(info.read_text())
        (folder / "training.json").write_text(json.dumps(meta, indent=2))
        print(f"wrote {folder}", file=sys.stderr)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m locedit.world.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    for name, steps, batch, lr in (("vae", 2500, 16, 2e-3), ("t2i", 4000, 32, 1e-3), ("instruct", 4000, 32, 1e-3)):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True)
        s.add_argument("--steps", type=int, default=steps)
        s.add_argument("--batch", type=int, default=batch)
        s.add_argument("--lr", type=float, default=lr)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--device", default="auto")
        s.add_argument("--log-every", type=int, default=50)
        s.add_argument("--save-every", type=int, default=500)
        s.add_argument("--init", help="continue from the weights of a saved diffusers folder")
        if name == "vae":
            s.add_argument("--kl", type=float, default=1e-4)
        else:
            s.add_argument("--vae", required=True)
            s.add_argument("--drop", type=float, default=0.1 if name == "t2i" else 0.05)
            s.add_argument("--ema", type=float, default=0.999)
    a = sub.add_parser("assemble")
    a.add_argument("--vae", required=True)
    a.add_argument("--t2i")
    a.add_argument("--instruct")
    a.add_argument("--dest", default=str(Path(__file__).resolve().parents[1] / "models"))
    args = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    {"vae": train_vae, "t2i": train_t2i, "instruct": train_instruct, "assemble": assemble}[args.what](args)


if __name__ == "__main__":
    main()
