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

import torch
import torch.nn.functional as F

from ..diffusion.tiny import SD_SCHEDULER_CONFIG, word_tokenizer
from .data import IMAGE_SIZE, edit_batch, scene_batch
from .scene import VOCABULARY
from .trainloop import (MAX_TOKENS, LatentCache, diffusion_loop, encode_prompts, load_vae, log, lr_factor, pick_device,
                        provenance, vae_latents)

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


# ---- helpers ---------------------------------------------------------------------------------------------
def _warmup_cosine(opt, steps: int, warmup: int = 100):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of the peak (:func:`lr_factor`)."""
    from types import SimpleNamespace

    plan = SimpleNamespace(steps=steps, warmup=warmup, schedule="cosine")
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, plan))


def _alphas(device):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(SD_SCHEDULER_CONFIG).alphas_cumprod.to(device)


# ---- trainers ---------------------------------------------------------------------------------------------
def train_vae(args) -> None:
    """Reconstruction (L1 + MSE) with a small KL term; sets scaling_factor to 1 / latent std."""
    device, out = pick_device(args.device), Path(args.out)
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
            log(out, step, loss=loss.item(), psnr=psnr, seconds=time.time() - t0)
        if args.save_every and step % args.save_every == 0:
            vae.save_pretrained(out / "last", safe_serialization=True)
    with torch.no_grad():
        x, _ = scene_batch(random.Random(args.seed + 1), 256)
        z = torch.cat([vae.encode(c.to(device) * 2 - 1).latent_dist.mean for c in x.split(64)])
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(out, safe_serialization=True)
    (out / "train.json").write_text(json.dumps({**vars(args), "seconds": time.time() - t0, "device": str(device)}))


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weight for epsilon prediction (Hang et al., ICCV 2023, Eq. 8 with the
    epsilon-space conversion): min(SNR, gamma) / SNR, with SNR = alpha_bar / (1 - alpha_bar).
    It stops the low-noise steps, which are easy and many, from dominating the gradient."""
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


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
        emb = encode_prompts(tokenizer, text_encoder, prompts, device)
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
    """The UNet trainers' call of :func:`diffusion_loop` (checkpoint keys ``unet``, ``text_encoder``)."""
    def save_fn(folder):
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(folder / "tokenizer")

    diffusion_loop(args, {"unet": unet, "text_encoder": text_encoder},
                    _epsilon_loss(args, unet, text_encoder, tokenizer, device), save_fn, batch_fn, out, evaluate)


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
    device, out = pick_device(args.device), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    vae = load_vae(args.vae, device)
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
            z = vae_latents(vae, x, device)
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
        zt = vae_latents(vae, tgt, device)
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
