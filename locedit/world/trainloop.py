"""The shapes models' training loop, shared by every trainer (the UNets in :mod:`.train`, the flow
transformer in :mod:`.train_flow`): AdamW with EMA, atomic checkpoints and exact resumption,
cached VAE latents of the training scenes, the learning-rate schedule, and the provenance a
shipped folder records."""

from __future__ import annotations

import json
import random
import re
import sys
import time
from pathlib import Path

import torch

from .data import IMAGE_SIZE, to_tensor
from .scene import render

MAX_TOKENS = 32


def pick_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def log(out: Path, step: int, **values) -> None:
    line = json.dumps({"step": step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}})
    print(line, file=sys.stderr, flush=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(line + "\n")


def encode_prompts(tokenizer, text_encoder, prompts, device):
    ids = tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(device))[0]


def load_vae(path: str, device):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(path, use_safetensors=True).to(device).eval().requires_grad_(False)
    return vae


@torch.no_grad()


def vae_latents(vae, x, device):
    return vae.encode(x.to(device) * 2 - 1).latent_dist.mean * vae.config.scaling_factor


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
        self.latents[start: start + n] = vae_latents(self.vae, x, self.device).cpu().half()
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


def lr_factor(step: int, args) -> float:
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


def diffusion_loop(args, modules: dict, loss_fn, save_fn, batch_fn, out: Path, evaluate=None) -> None:
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
    elapsed0 = float(read_json(out / "progress.json").get("seconds", 0.0)) if step0 else 0.0
    t0, last_save = time.time(), time.time()
    every = getattr(args, "checkpoint_minutes", 0) * 60

    def save_state(step):
        tmp = state_path.with_suffix(".tmp")
        torch.save({"step": step, **{name: m.state_dict() for name, m in modules.items()},
                    "opt": opt.state_dict(), "ema": ema, "gen": gen.get_state(), "rng": rng.getstate()}, tmp)
        tmp.replace(state_path)
        with_ema(params, ema, lambda: save_fn(out / "ema"))
        (out / "progress.json").write_text(json.dumps({"step": step, "seconds": elapsed0 + time.time() - t0}))

    for step in range(step0 + 1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(step, args)
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
            log(out, step, loss=loss.item(), mse=mse.item(), **extra, lr=opt.param_groups[0]["lr"],
                 seconds=elapsed0 + time.time() - t0)
        if evaluate is not None and args.eval_every and step % args.eval_every == 0:
            with_ema(params, ema, lambda: evaluate(step))
        if (every and time.time() - last_save > every) or (args.save_every and step % args.save_every == 0):
            save_state(step)
            last_save = time.time()
    save_state(args.steps)
    with_ema(params, ema, lambda: save_fn(out))
    (out / "train.json").write_text(json.dumps({**vars(args), "seconds": elapsed0 + time.time() - t0,
                                                "device": str(device_of(modules))}))


def device_of(modules: dict) -> torch.device:
    return next(next(iter(modules.values())).parameters()).device


def _to_rng_state(saved):
    """random.Random.setstate wants tuples; a checkpoint may hand back lists."""
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def with_ema(params, ema, fn):
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
