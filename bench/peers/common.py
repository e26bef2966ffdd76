"""What every side-by-side run shares: the model folder, the inputs, the official environments, the
adapted copy of an official checkout, fresh-process runs and the comparison.

Nothing of an official repository is vendored: the user points ``--checkout`` at their own clone,
which is copied into the work folder and adapted there by the exact text patches each peer module
lists (sizes and devices only). Runs happen in fresh processes so that every peak-memory figure is
one process's own.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DRIVERS = HERE / "drivers"
SHIMS = HERE / "shims"
ROOT = HERE.parents[1]
DEFAULT_WORK = Path(os.environ.get("LOCEDIT_PEERS_HOME", Path.home() / ".cache" / "locedit-peers"))
TORCH = os.environ.get("LOCEDIT_PEERS_TORCH", "torch==2.13.0")


class PeerError(RuntimeError):
    """A side-by-side run that cannot go on; the message says why in one line."""


# ---- the model ------------------------------------------------------------------------------------
def make_model(folder: Path, size: int, instruct: bool = False, seed: int = 0, components=None) -> Path:
    """Write SD 1.x's architecture with random weights (InstructPix2Pix's 8-channel UNet with
    ``instruct``) as a diffusers folder that both current and 2022-era diffusers/transformers read:
    safetensors weights, the VAE's attention under its pre-0.14 names (query/key/value/proj_attn,
    which current diffusers still converts on load), and the tokenizer as vocab.json + merges.txt
    (what every CLIPTokenizer version reads). Kept when it exists with the same settings.
    ``components``: a builder like :func:`locedit.diffusion.tiny.sd15_components` (tests pass the
    tiny one)."""
    from diffusers import DDIMScheduler
    from safetensors.torch import load_file, save_file

    from locedit.diffusion.tiny import TINY_WORDS, sd15_components, word_vocab

    stamp = {"size": size, "instruct": instruct, "seed": seed, "version": 2,
             "components": getattr(components, "__name__", "sd15_components")}
    if instruct:
        stamp["scheduler"] = "euler-ancestral"
    if (folder / "locedit-peer.json").exists() and json.loads((folder / "locedit-peer.json").read_text()) == stamp:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    build = components or sd15_components
    unet, vae, te, tok, cfg = build(seed=seed, image_size=size, in_channels=8 if instruct else 4)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    te.save_pretrained(folder / "text_encoder", safe_serialization=True)
    legacy = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    renamed = {}
    for k, v in state.items():
        if "attentions" in k:
            for new, old in legacy.items():
                k = k.replace(new, old)
        renamed[k] = v.contiguous()
    save_file(renamed, str(path), metadata={"format": "pt"})
    path = folder / "text_encoder" / "model.safetensors"  # transformers 5 drops the text_model. prefix
    state = load_file(path)
    save_file({(k if k.startswith("text_model.") else "text_model." + k): v.contiguous() for k, v in state.items()},
              str(path), metadata={"format": "pt"})
    vocab, merges = word_vocab(TINY_WORDS)
    tdir = folder / "tokenizer"
    tdir.mkdir(parents=True)
    (tdir / "vocab.json").write_text(json.dumps(vocab))
    (tdir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (tdir / "special_tokens_map.json").write_text(json.dumps(special))
    (tdir / "tokenizer_config.json").write_text(json.dumps({**special, "model_max_length": tok.model_max_length,
                                                            "tokenizer_class": "CLIPTokenizer",
                                                            "do_lower_case": True}))
    if instruct:  # the released InstructPix2Pix checkpoint's scheduler, on SD's betas
        from diffusers import EulerAncestralDiscreteScheduler

        EulerAncestralDiscreteScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            prediction_type="epsilon", steps_offset=1, timestep_spacing="linspace").save_config(folder / "scheduler")
    else:
        DDIMScheduler.from_config(cfg).save_config(folder / "scheduler")
    pipe = "StableDiffusionInstructPix2PixPipeline" if instruct else "StableDiffusionPipeline"
    index = {"_class_name": pipe, "_diffusers_version": "0.10.0", "feature_extractor": [None, None],
             "safety_checker": [None, None], "requires_safety_checker": False,
             "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler" if instruct else "DDIMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / "locedit-peer.json").write_text(json.dumps(stamp))
    return folder


def make_image(path: Path, size: int) -> Path:
    """The input picture: a shapes-world scene (a red circle and a blue square on gray) at ``size``,
    with the circle's mask (``-mask.png``) and a box around each object (``-box-left.png``,
    ``-box-right.png``: a half-width, half-height box, which nearest resizing keeps non-empty down to
    the 2x2 maps of a 64 px run; the circle's own mask vanishes there)."""
    from PIL import Image

    from locedit.world.scene import Obj, Scene, render

    scene = Scene((Obj("circle", "red", "plain", 0.3, 0.5, 0.34), Obj("square", "blue", "plain", 0.72, 0.5, 0.3)),
                  "gray")
    img, masks = render(scene, size)
    Image.fromarray(img).save(path)
    Image.fromarray((masks[0] * 255).astype(np.uint8)).save(path.with_name(path.stem + "-mask.png"))
    for side, cols in (("left", slice(0, size // 2)), ("right", slice(size // 2, size))):
        box = np.zeros((size, size), np.uint8)
        box[size // 4: 3 * size // 4, cols] = 255
        Image.fromarray(box).save(path.with_name(f"{path.stem}-box-{side}.png"))
    return path


# ---- official environments -------------------------------------------------------------------------
@dataclass(frozen=True)
class Patch:
    """One text replacement in the copied checkout: ``old`` must occur exactly ``count`` times in
    ``file`` (else the checkout is not the code this patch was written for, and the run stops)."""

    file: str
    old: str
    new: str
    count: int = 1
    why: str = ""


def p2p_controller_patches(file: str, size: int) -> list[Patch]:
    """The sizes Prompt-to-Prompt's controller module hard-codes for 512 px (every P2P-derived
    repository carries a copy): the local blend's latent size and map level, and the largest maps
    stored and self-injected."""
    latent, maps, self_max = size // 8, size // 32, size // 16
    return [
        Patch(file, "LATENT_SIZE = (64, 64)", f"LATENT_SIZE = ({latent}, {latent})",
              why="latent size of the local-blend mask"),
        Patch(file, "1, 16, 16, MAX_NUM_WORDS", f"1, {maps}, {maps}, MAX_NUM_WORDS",
              why="the local blend's maps are the latent/4 level (16x16 at 512 px)"),
        Patch(file, "32 ** 2", f"{self_max} ** 2", 2,
              why="maps stored and self-attention injected up to the latent/2 level (32x32 at 512 px)"),
    ]


@dataclass(frozen=True)
class Peer:
    """An official implementation: its pinned environment (the repository's own pins first, then
    each adjustment with its reason) and the patches that adapt sizes and devices."""

    name: str
    repository: str
    requirements: tuple[str, ...]
    adjustments: tuple[tuple[str, str], ...]  # (requirement, why it is pinned or changed)
    patches: object  # callable(size, device, steps) -> list[Patch]
    methods: tuple[str, ...]
    python_path: tuple[str, ...] = (".",)
    shims: tuple[str, ...] = ()  # stand-in packages under bench/peers/shims put on the official side's path
    instruct: bool = False  # the model: InstructPix2Pix's (8-channel UNet, Euler ancestral) instead of SD 1.x
    notes: tuple[str, ...] = field(default_factory=tuple)


def build_env(peer: Peer, work: Path) -> Path:
    """A virtual environment for ``peer`` under ``work/<name>/venv``, built from the package
    registries once (a stamp file records the requirement list; a changed list rebuilds it)."""
    env = work / peer.name / "venv"
    py = env / "bin" / "python"
    reqs = [TORCH, *peer.requirements, *(r for r, _ in peer.adjustments)]
    stamp = env / "locedit-requirements.txt"
    if py.exists() and stamp.exists() and stamp.read_text() == "\n".join(reqs):
        return py
    if env.exists():
        shutil.rmtree(env)
    env.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{peer.name}] building its environment in {env} (a few minutes)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    proc = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *reqs],
                          capture_output=True, text=True)
    if proc.returncode:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
        raise PeerError(f"{peer.name}: pip could not build the environment: {tail[-1] if tail else proc.returncode}")
    stamp.write_text("\n".join(reqs))
    return py


def prepare_checkout(peer: Peer, checkout: Path, work: Path, size: int, device: str, steps: int = 50) -> Path:
    """Copy the user's checkout (without .git) to ``work/<name>/src-<size>-<device>`` and apply the
    peer's patches for that size, device and step count there; the checkout itself is never
    modified."""
    if not checkout.is_dir():
        raise PeerError(f"{peer.name}: --checkout {checkout} is not a folder (clone {peer.repository} there)")
    dest = work / peer.name / f"src-{size}-{device}"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(checkout, dest, ignore=shutil.ignore_patterns(".git"))
    for p in peer.patches(size, device, steps):
        f = dest / p.file
        if not f.exists():
            raise PeerError(f"{peer.name}: {p.file} is missing from {checkout}; is it a clone of {peer.repository}?")
        text = f.read_text()
        found = text.count(p.old)
        if found != p.count:
            raise PeerError(f"{peer.name}: expected {p.count} occurrence(s) of {p.old!r} in {p.file}, found {found}; "
                            f"the checkout differs from the code these patches were written for")
        f.write_text(text.replace(p.old, p.new))
    return dest


def checkout_commit(checkout: Path) -> str:
    proc = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


# ---- runs -------------------------------------------------------------------------------------------
def run_process(python: Path | str, script: Path, args: dict, out: Path, env_extra: dict | None = None,
                python_path: list[Path] = ()) -> dict:
    """Run ``script`` in a fresh ``python`` process with the JSON ``args``; it writes ``out`` (JSON)
    and ``out.npz``. Returns the JSON with the run's figures."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in (out, out.with_suffix(".npz")):
        p.unlink(missing_ok=True)
    env = dict(os.environ, **(env_extra or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(DRIVERS), *map(str, python_path)])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    proc = subprocess.run([str(python), str(script), json.dumps(args), str(out)], capture_output=True, text=True,
                          env=env)
    if proc.returncode or not out.exists():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        err = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
        (out.with_suffix(".log")).write_text(proc.stderr)
        raise PeerError(f"{script.name} {args.get('method')}: exit {proc.returncode}: {err[:300]} "
                        f"(log: {out.with_suffix('.log')})")
    return json.loads(out.read_text())


def compare(official: Path, ours: Path) -> dict:
    """Largest absolute differences between the two sides' saved outputs: the edited latents (both
    branches), the target image (0-255 levels) and any intermediate array both sides saved, plus
    the official side's latent range for scale."""
    a, b = np.load(official), np.load(ours)
    out = {}
    for key in ("latents", "image", *sorted(set(a.files) & set(b.files) - {"latents", "image"})):
        if key in a and key in b:
            x, y = a[key].astype(np.float64), b[key].astype(np.float64)
            if x.shape != y.shape:
                raise PeerError(f"{key}: shapes differ, official {x.shape} vs locedit {y.shape}")
            out[f"max_diff_{key}"] = float(np.abs(x - y).max())
    if "latents" in a:
        out["latent_scale"] = float(np.abs(a["latents"]).max())
    return out


def locedit_p2p(spec: dict, bundle, image, inversion: str, cross_replace: float, edit_options=None):
    """The official scripts' P2P edit in locedit: reweight (refine + the target blend word x2), the
    blend words' local blend, ``cross_replace``, self 0.6, the method's and ``inversion``'s official
    presets. Returns (edited latents of both branches, target image (H, W, 3) uint8, truncated as
    their ``latent2image``)."""
    from locedit import pipeline
    from locedit.control import P2POptions
    from locedit.inversion import INVERSIONS
    from locedit.methods import P2PEditOptions
    from locedit.options import apply_preset

    src_word, tgt_word = spec["blend_words"]
    options = apply_preset(P2PEditOptions(P2POptions(mode="reweight", cross_replace=cross_replace, self_replace=0.6,
                                                     reweight=((tgt_word, 2.0),))), "official")
    res = pipeline.edit(bundle, image, spec["source"], spec["target"], method="p2p", options=options,
                        inversion=inversion, inversion_options=apply_preset(INVERSIONS[inversion].Options(), "official"),
                        blend_words=(src_word, tgt_word), num_steps=spec["steps"],
                        edit_options=edit_options or pipeline.EditOptions())
    picture = (res.edited[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    return res.sample.latents, picture


def summarise(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values)}
