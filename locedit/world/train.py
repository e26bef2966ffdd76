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
import re
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


UNET_ARCHS = {
    # v1: the first shipped models (1.08M parameters)
    "v1": dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4),
    # v2: wider, plus a 4x4 level without attention for the global layout (7.07M parameters). The
    # cross-attention sites stay at 16x16 and 8x8 latents, as in v1 and SD's 64/32/16 levels.
    # Measured on the 2-core CPU, batch 64, UNet alone: v1 98 samples/s, v2 52 samples/s.
    "v2": dict(block_out_channels=(48, 96, 192),
               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8),
}


def make_unet(in_channels: int = 4, arch: str = "v1"):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=in_channels, out_channels=4, layers_per_block=1,
        cross_attention_dim=TEXT_DIM, norm_num_groups=16, **UNET_ARCHS[arch],
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


def scene_batch(rng: random.Random, n: int, with_scenes: bool = False):
    scenes = [sample_scene(rng) for _ in range(n)]
    x, caps = to_tensor([render(s, IMAGE_SIZE)[0] for s in scenes]), [s.caption() for s in scenes]
    return (x, caps, scenes) if with_scenes else (x, caps)


def edit_batch(rng: random.Random, n: int, with_edits: bool = False):
    edits = [sample_edit(rng) for _ in range(n)]
    src = to_tensor([e.render_source(IMAGE_SIZE) for e in edits])
    tgt = to_tensor([e.render_target(IMAGE_SIZE) for e in edits])
    return (src, tgt, [e.instruction for e in edits]) + ((edits,) if with_edits else ())


# ---- helpers ---------------------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def _log(out: Path, step: int, **values) -> None:
    line = json.dumps({"step": step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}})
    print(line, file=sys.stderr, flush=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(line + "\n")


def _warmup_cosine(opt, steps: int, warmup: int = 100):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of the peak (:func:`_lr_factor`)."""
    from types import SimpleNamespace

    plan = SimpleNamespace(steps=steps, warmup=warmup, schedule="cosine")
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, plan))


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


class LatentCache:
    """VAE latents of the training scenes with seeds 0, 1, 2, ... up to ``size``, built progressively.

    The world is infinite, but encoding every batch costs a fifth of a CPU training step; latents are
    therefore encoded once and reused. The cache grows by ``fill(n)`` scenes at a time (the trainer
    adds a few per step until it is full, so training starts at once) and is kept on disk in shards
    of ``SHARD`` scenes under a folder named after the VAE weights' hash, so it is rebuilt exactly
    (same seeds, same VAE) wherever it is missing. Captions are recomputed from the seeds.
    """

    SHARD = 4096

    def __init__(self, folder: str | Path, vae, vae_path: str | Path, device, size: int):
        import hashlib

        digest = hashlib.sha256(Path(vae_path, "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()[:12]
        self.folder = Path(folder) / f"t2i-{IMAGE_SIZE}-{digest}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.vae, self.device, self.size = vae, device, size
        side = IMAGE_SIZE // 4
        self.latents = torch.empty((size, 4, side, side), dtype=torch.float16)
        self.captions: list[str] = []
        from safetensors.torch import load_file

        k = 0
        while len(self.captions) + self.SHARD <= size and (self.folder / f"shard-{k:04d}.safetensors").exists():
            lat = load_file(self.folder / f"shard-{k:04d}.safetensors")["latents"]
            self.latents[len(self.captions): len(self.captions) + len(lat)] = lat
            self.captions += [_scene_of(len(self.captions) + i).caption() for i in range(len(lat))]
            k += 1

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def full(self) -> bool:
        return len(self) >= self.size

    def fill(self, n: int) -> None:
        """Encode the next ``n`` scenes (fewer when the cache is full); write a shard when one completes."""
        n = min(n, self.size - len(self))
        if n <= 0:
            return
        start = len(self)
        scenes = [_scene_of(start + i) for i in range(n)]
        x = to_tensor([render(s, IMAGE_SIZE)[0] for s in scenes])
        self.latents[start: start + n] = _latents(self.vae, x, self.device).cpu().half()
        self.captions += [s.caption() for s in scenes]
        first = start // self.SHARD * self.SHARD
        if len(self) - first >= self.SHARD:  # a shard just completed
            from safetensors.torch import save_file

            path = self.folder / f"shard-{first // self.SHARD:04d}.safetensors"
            tmp = path.with_suffix(".tmp")
            save_file({"latents": self.latents[first: first + self.SHARD].contiguous()}, str(tmp))
            tmp.replace(path)

    def batch(self, gen: torch.Generator, n: int, with_scenes: bool = False):
        idx = torch.randint(0, len(self), (n,), generator=gen).tolist()
        z, caps = self.latents[idx].float(), [self.captions[i] for i in idx]
        return (z, caps, [_scene_of(i) for i in idx]) if with_scenes else (z, caps)


def _scene_of(seed: int):
    from .scene import scene_from_seed

    return scene_from_seed(seed)


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weight for epsilon prediction (Hang et al., ICCV 2023, Eq. 8 with the
    epsilon-space conversion): min(SNR, gamma) / SNR, with SNR = alpha_bar / (1 - alpha_bar).
    It stops the low-noise steps, which are easy and many, from dominating the gradient."""
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def _lr_factor(step: int, args) -> float:
    """Linear warm-up, then constant (``--schedule constant``) or cosine to 10% at ``--steps``."""
    import math

    warmup = getattr(args, "warmup", 100)
    if step < warmup:
        return (step + 1) / warmup
    if getattr(args, "schedule", "cosine") == "constant":
        cool = getattr(args, "cooldown", 0)
        if cool and step > args.steps - cool:  # linear cool-down to 10% over the last steps
            return 1.0 - 0.9 * (step - (args.steps - cool)) / cool
        return 1.0
    p = (step - warmup) / max(1, args.steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def _diffusion_loop(args, modules: dict, loss_fn, save_fn, batch_fn, out: Path, evaluate=None) -> None:
    """Train ``modules`` (name -> module) on ``loss_fn`` with AdamW and EMA, resumable.

    ``batch_fn(rng, gen)`` returns one batch (a tuple); ``loss_fn(batch, gen)`` returns (loss, mse,
    extra figures for the log); ``save_fn(folder)`` writes the modules as they are (it is called with
    the EMA weights swapped in). The epsilon-prediction UNets (:func:`_epsilon_loss`) and the shapes
    flow transformer (:mod:`locedit.world.train_flow`) share this loop. Every
    ``--checkpoint-minutes`` the full state (live weights, optimiser, EMA, step, random streams) is
    written atomically to ``out/checkpoint.pt`` and the EMA weights to ``out/ema`` (a diffusers folder);
    ``--resume`` continues from the checkpoint exactly where it stopped. ``evaluate(step)``, if
    given, runs every ``--eval-every`` steps with the EMA weights swapped in.
    """
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    ema = [p.detach().clone() for p in params]
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    rng = random.Random(args.seed)
    state_path, step0 = out / "checkpoint.pt", 0
    if getattr(args, "resume", False) and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        for name, module in modules.items():
            module.load_state_dict(state[name])
        opt.load_state_dict(state["opt"])
        with torch.no_grad():
            for e, v in zip(ema, state["ema"]):
                e.copy_(v)
        gen.set_state(state["gen"])
        rng.setstate(_to_rng_state(state["rng"]))
        step0 = int(state["step"])
        print(f"resumed from {state_path} at step {step0}", file=sys.stderr, flush=True)
    elapsed0 = float(_read_json(out / "progress.json").get("seconds", 0.0)) if step0 else 0.0
    t0, last_save = time.time(), time.time()
    every = getattr(args, "checkpoint_minutes", 0) * 60

    def save_state(step):
        tmp = state_path.with_suffix(".tmp")
        torch.save({"step": step, **{name: m.state_dict() for name, m in modules.items()},
                    "opt": opt.state_dict(), "ema": ema, "gen": gen.get_state(), "rng": rng.getstate()}, tmp)
        tmp.replace(state_path)
        _with_ema(params, ema, lambda: save_fn(out / "ema"))
        (out / "progress.json").write_text(json.dumps({"step": step, "seconds": elapsed0 + time.time() - t0}))

    for step in range(step0 + 1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = args.lr * _lr_factor(step, args)
        loss, mse, extra = loss_fn(batch_fn(rng, gen), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for e, p in zip(ema, params):
                e.mul_(d).add_(p.detach(), alpha=1 - d)
        if step % args.log_every == 0 or step == args.steps:
            _log(out, step, loss=loss.item(), mse=mse.item(), **extra, lr=opt.param_groups[0]["lr"],
                 seconds=elapsed0 + time.time() - t0)
        if evaluate is not None and args.eval_every and step % args.eval_every == 0:
            _with_ema(params, ema, lambda: evaluate(step))
        if (every and time.time() - last_save > every) or (args.save_every and step % args.save_every == 0):
            save_state(step)
            last_save = time.time()
    save_state(args.steps)
    _with_ema(params, ema, lambda: save_fn(out))
    (out / "train.json").write_text(json.dumps({**vars(args), "seconds": elapsed0 + time.time() - t0,
                                                "device": str(device_of(modules))}))


def device_of(modules: dict) -> torch.device:
    return next(next(iter(modules.values())).parameters()).device


def _epsilon_loss(args, unet, text_encoder, tokenizer, device):
    """The UNets' loss: epsilon prediction on SD's scaled-linear schedule (min-SNR-gamma weighting with
    ``--min-snr``), plus TokenCompose's token grounding term with ``--ground`` (the batch then also
    carries what each prompt describes: its scene for a caption, its edit for an instruction, None
    where the text was dropped; :mod:`locedit.world.grounding`)."""
    alphas = _alphas(device)
    gamma = getattr(args, "min_snr", 0.0)
    ground = getattr(args, "ground", 0.0)
    recorder = None
    if ground:
        from ..attention import controlled_attention
        from .grounding import GROUNDED_SITES, GroundingRecorder, grounding_targets, token_grounding_loss

        recorder = GroundingRecorder(GROUNDED_SITES)

    def loss_fn(batch, gen):
        z0, cond_in, prompts, *scenes = batch
        b = z0.shape[0]
        z0 = z0.to(device)
        t = torch.randint(0, len(alphas), (b,), generator=gen).to(device)
        noise = torch.randn(z0.shape, generator=gen).to(device)
        a = alphas[t].view(b, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        emb = _encode(tokenizer, text_encoder, prompts, device)
        x = zt if cond_in is None else torch.cat([zt, cond_in], 1)
        if recorder is None:
            pred = unet(x, t, encoder_hidden_states=emb).sample
        else:
            with controlled_attention(unet, recorder, GROUNDED_SITES):
                pred = unet(x, t, encoder_hidden_states=emb).sample
        per_sample = ((pred.float() - noise) ** 2).mean(dim=(1, 2, 3))
        mse = per_sample.mean()
        loss = (per_sample * min_snr_weight(alphas[t], gamma)).mean() if gamma else mse
        extra = {}
        if recorder is not None:
            side = [int(p.shape[2] ** 0.5) for p in recorder.probs]
            targets, grounded = grounding_targets(tokenizer, scenes[0], emb.shape[1], IMAGE_SIZE, tuple(set(side)))
            lg = torch.stack([token_grounding_loss(p, targets[s].to(device), grounded)
                              for p, s in zip(recorder.probs, side)]).mean()
            recorder.probs.clear()  # the graph holds them until the backward pass
            loss = loss + ground * lg
            extra["ground"] = lg.item()
        return loss, mse, extra

    return loss_fn


def _unet_loop(args, unet, text_encoder, tokenizer, device, batch_fn, out: Path, evaluate=None) -> None:
    """The UNet trainers' call of :func:`_diffusion_loop` (checkpoint keys ``unet``, ``text_encoder``)."""
    def save_fn(folder):
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(folder / "tokenizer")

    _diffusion_loop(args, {"unet": unet, "text_encoder": text_encoder},
                    _epsilon_loss(args, unet, text_encoder, tokenizer, device), save_fn, batch_fn, out, evaluate)


def _to_rng_state(saved):
    """random.Random.setstate wants tuples; a checkpoint may hand back lists."""
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _with_ema(params, ema, fn):
    """Run ``fn`` with the EMA weights in the live parameters; the live weights come back in ``finally``."""
    live = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    try:
        return fn()
    finally:
        with torch.no_grad():
            for p, v in zip(params, live):
                p.copy_(v)


def _t2i_curve(unet, text_encoder, tokenizer, vae, device, out: Path, n: int, steps: int):
    """The learning curve's point: gate 2 (oracle on free generation) on ``n`` held-out captions."""
    from ..diffusion.model import ModelBundle
    from .gates import gate_t2i

    def evaluate(step):
        bundle = ModelBundle(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                             scheduler_config=dict(SD_SCHEDULER_CONFIG), name="training", device=device)
        unet.eval(), text_encoder.eval()
        t = time.time()
        try:
            with torch.no_grad():
                fig = gate_t2i(bundle, n=n, steps=steps)
        finally:
            unet.train(), text_encoder.train()
        line = json.dumps({"step": step, **fig, "eval_seconds": round(time.time() - t, 1)})
        print("curve " + line, file=sys.stderr, flush=True)
        with open(out / "curve.jsonl", "a") as f:
            f.write(line + "\n")

    return evaluate


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
        te, unet = make_text_encoder(tokenizer), make_unet(in_channels, getattr(args, "arch", "v1"))
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
    device, out, _, vae, tok, te, unet = _prepare(args, in_channels=4)
    cache = None
    if args.cache:
        cache = LatentCache(args.cache, vae, args.vae, device, args.cache_size)
        print(f"latent cache: {len(cache)} of {args.cache_size} scenes in {cache.folder}", file=sys.stderr, flush=True)
        cache.fill(max(0, args.batch * 4 - len(cache)))

    ground = bool(args.ground)

    def batch(rng, gen):
        if cache is None:
            x, caps, *scenes = scene_batch(rng, args.batch, with_scenes=ground)
            z = _latents(vae, x, device)
        else:
            cache.fill(args.cache_fill)
            z, caps, *scenes = cache.batch(gen, args.batch, with_scenes=ground)
        drop = torch.rand(len(caps), generator=gen) < args.drop
        prompts = ["" if d else c for c, d in zip(caps, drop.tolist())]
        if not ground:
            return z, None, prompts
        return z, None, prompts, [None if d else s for s, d in zip(scenes[0], drop.tolist())]

    evaluate = _t2i_curve(unet, te, tok, vae, device, out, args.eval_n, args.eval_steps) if args.eval_every else None
    _unet_loop(args, unet, te, tok, device, batch, out, evaluate)


def train_instruct(args) -> None:
    """InstructPix2Pix (Brooks et al. 2023): UNet input = [noisy target latent, source latent];
    the instruction and the image conditioning are each dropped 5% of the time, both together 5%."""
    device, out, _, vae, tok, te, unet = _prepare(args, in_channels=8)

    ground = bool(args.ground)

    def batch(rng, gen):
        src, tgt, instr, *edits = edit_batch(rng, args.batch, with_edits=ground)
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
        if not ground:
            return zt, zs, instr
        return zt, zs, instr, [e if p else None for e, p in zip(edits[0], instr)]

    _unet_loop(args, unet, te, tok, device, batch, out)


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
        meta = {"vae": provenance(Path(args.vae)), "diffusion": provenance(Path(src))}
        (folder / "training.json").write_text(json.dumps(meta, indent=2))
        write_model_index(folder, instruct=name == "shapes-instruct")
        print(f"wrote {folder}", file=sys.stderr)
    if args.flow:
        from .train_flow import assemble_flow

        assemble_flow(Path(args.flow), Path(args.vae), dest / "shapes-flow")


def provenance(folder: Path, _seen: frozenset = frozenset()) -> dict:
    """What a weights folder records of how it was trained: every ``train*.json`` (settings and
    seconds), ``progress.json`` (steps, runs) and ``command.txt``, and then the same of the folder its
    run started from (``--init``), back to a run from scratch. ``training.json`` in a shipped folder is
    this, so the shipped weights carry their whole lineage."""
    record: dict = {"folder": str(folder)}
    for info in sorted(folder.glob("train*.json")):
        record[info.name] = json.loads(info.read_text())
    if (folder / "progress.json").exists():
        record["progress"] = json.loads((folder / "progress.json").read_text())
    init = next((r["init"] for r in record.values() if isinstance(r, dict) and r.get("init")), None)
    if (folder / "command.txt").exists():
        record["command"] = (folder / "command.txt").read_text()
        found = re.search(r"--init (\S+)", record["command"])
        init = init or (found.group(1) if found else None)
    seen = _seen | {str(folder.resolve())}
    if init and Path(init).is_dir() and str(Path(init).resolve()) not in seen:
        record["init"] = provenance(Path(init), seen)
    return record


def write_model_index(folder: Path, instruct: bool) -> None:
    """``model_index.json``: makes the folder a diffusers pipeline folder, so that
    ``StableDiffusionPipeline`` (or ``StableDiffusionInstructPix2PixPipeline``) ``.from_pretrained``
    loads it; no safety checker (the shapes world has nothing to check)."""
    import diffusers

    index = {
        "_class_name": "StableDiffusionInstructPix2PixPipeline" if instruct else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "image_encoder": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (Path(folder) / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m locedit.world.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    from .train_flow import FLOW_ARCHS, train_flow

    for name, steps, batch, lr in (("vae", 2500, 16, 2e-3), ("t2i", 4000, 32, 1e-3), ("instruct", 4000, 32, 1e-3),
                                   ("flow", 60000, 64, 3e-4)):
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
            s.add_argument("--drop", type=float, default=0.05 if name == "instruct" else 0.1)
            s.add_argument("--ema", type=float, default=0.999)
            archs = FLOW_ARCHS if name == "flow" else UNET_ARCHS
            s.add_argument("--arch", choices=sorted(archs), default=min(archs),
                           help="architecture for a fresh model (ignored with --init, which keeps the saved one)")
            s.add_argument("--min-snr", type=float, default=0.0, help="min-SNR-gamma loss weighting (0: plain MSE)")
            s.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
            s.add_argument("--warmup", type=int, default=100)
            s.add_argument("--cooldown", type=int, default=0, help="with --schedule constant: linear decay over the last N steps")
            s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
            s.add_argument("--checkpoint-minutes", type=float, default=0.0, help="write the full training state this often")
            if name == "flow":
                s.add_argument("--init-text", default=str(Path(__file__).resolve().parents[1] / "models" / "shapes"),
                               help="a fresh model's CLIP text encoder and tokenizer start from this folder's")
            s.add_argument("--ground", type=float, default=0.0,
                           help="weight of TokenCompose's token grounding loss on the cross-attention maps (0: off); "
                                "t2i grounds the caption's words, instruct the instruction's")
            if name in ("t2i", "flow"):
                s.add_argument("--cache", required=name == "flow", help="folder for cached training latents (built progressively)")
                s.add_argument("--cache-size", type=int, default=200_000)
                s.add_argument("--cache-fill", type=int, default=32, help="scenes added to the cache per step until full")
                s.add_argument("--eval-every", type=int, default=0, help="gate 2 on held-out captions every N steps")
                s.add_argument("--eval-n", type=int, default=50)
                s.add_argument("--eval-steps", type=int, default=50)
    a = sub.add_parser("assemble")
    a.add_argument("--vae", required=True)
    a.add_argument("--t2i")
    a.add_argument("--instruct")
    a.add_argument("--flow", help="a flow run's weights folder: written as DEST/shapes-flow (a FluxPipeline folder)")
    a.add_argument("--dest", default=str(Path(__file__).resolve().parents[1] / "models"))
    args = p.parse_args(argv)
    if args.what == "flow" and (args.ground or args.min_snr):
        p.error("--ground and --min-snr are for the UNets' epsilon loss, not the flow transformer's")
    torch.set_num_threads(torch.get_num_threads())
    {"vae": train_vae, "t2i": train_t2i, "instruct": train_instruct, "flow": train_flow, "assemble": assemble}[args.what](args)


if __name__ == "__main__":
    main()
