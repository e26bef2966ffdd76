"""Load a Stable-Diffusion-family model in diffusers format (local folder or hub id).

Safetensors only: a component whose folder holds only pickle weights (``.bin``, ``.ckpt``,
``.pt``, ``.pth``) is refused, since unpickling runs arbitrary code. Built-in models (the tiny
random one, and the bundled shapes models once present) are looked up in :data:`BUILTIN_MODELS`
before anything touches the disk or the network.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Callable

import torch

from ..errors import ModelLoadError
from .model import ModelBundle
from .names import BUILTIN_MODEL_NAMES, DTYPE_NAMES

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_WEIGHT_FOLDERS = ("unet", "vae", "text_encoder")
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _tiny_random(device, dtype) -> ModelBundle:
    from .tiny import tiny_bundle

    return tiny_bundle(seed=0, device=device, dtype=dtype)


BUNDLED_DIR = Path(__file__).resolve().parents[1] / "models"


def _bundled(name: str) -> Callable[[torch.device, torch.dtype], ModelBundle]:
    """Loader for a model shipped inside the package (``locedit/models/<name>``)."""

    def load(device, dtype):
        folder = BUNDLED_DIR / name
        if not folder.is_dir():
            raise ModelLoadError(f"bundled model {name!r} is missing from this installation (expected {folder})")
        bundle = load_model(str(folder), device, dtype)
        bundle.name = name
        return bundle

    return load


# name -> builder(device, dtype); the CLI's --model accepts these names besides paths and hub ids
BUILTIN_MODELS: dict[str, Callable[[torch.device, torch.dtype], ModelBundle]] = {
    "shapes": _bundled("shapes"),
    "shapes-instruct": _bundled("shapes-instruct"),
    "tiny-random": _tiny_random,
}
assert tuple(BUILTIN_MODELS) == BUILTIN_MODEL_NAMES and tuple(DTYPES) == DTYPE_NAMES  # the CLI's light copies


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu`` / ``cuda`` / ``cuda:N`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}: {exc}") from None


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _locate(model: str) -> Path:
    """A local folder, or the hub snapshot of ``owner/name`` (cache first, then download)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if not _HUB_ID.match(model) or model.startswith((".", "/", "~")):
        raise ModelLoadError(f"model {model!r}: no such folder, and not a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            model,
            allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"],
            local_files_only=os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"),
        )
    except Exception as exc:  # offline, unknown repo, gated: all mean "not available here"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"model {model!r}: no local folder of that name and the hub snapshot could not be had ({reason[:160]})"
        ) from None
    return Path(local)


def check_safetensors(folder: Path) -> None:
    """Refuse a diffusers folder whose weight components are missing or pickle-only."""
    for comp in _WEIGHT_FOLDERS:
        sub = folder / comp
        if not sub.is_dir():
            raise ModelLoadError(f"model folder {folder} has no {comp}/ component")
        files = [f.name for f in sub.iterdir()]
        if any(f.endswith(".safetensors") for f in files):
            continue
        pickles = [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
        if pickles:
            raise ModelLoadError(
                f"{sub}/{pickles[0]} is a pickle checkpoint; locedit loads safetensors only "
                "(convert it with diffusers' save_pretrained(..., safe_serialization=True))"
            )
        raise ModelLoadError(f"{sub} holds no .safetensors weights")
    for comp in ("tokenizer", "scheduler"):
        if not (folder / comp).is_dir():
            raise ModelLoadError(f"model folder {folder} has no {comp}/ component")


def load_model(model: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32") -> ModelBundle:
    """Load a model by built-in name, local diffusers folder or hub id.

    Supports SD v1.x and v2.x layouts (epsilon and v-prediction, read from the scheduler config).
    The networks are put in eval mode with gradients off; methods that optimise do so on latents
    or embeddings, never on weights.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype)
    if model in BUILTIN_MODELS:
        return BUILTIN_MODELS[model](dev, dt)
    folder = _locate(model)
    check_safetensors(folder)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        # diffusers wants `accelerate` for its low-memory loading and warns on every load without it
        low_mem = importlib.util.find_spec("accelerate") is not None
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True, torch_dtype=dt,
                                                    low_cpu_mem_usage=low_mem)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True, torch_dtype=dt,
                                            low_cpu_mem_usage=low_mem)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", use_safetensors=True, dtype=dt)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        scheduler_config = dict(DDIMScheduler.load_config(folder, subfolder="scheduler"))
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"model {model!r} could not be loaded: {first[:200]}") from None
    return finish_bundle(unet, vae, text_encoder, tokenizer, scheduler_config, name=model, device=dev, dtype=dt)


def finish_bundle(unet, vae, text_encoder, tokenizer, scheduler_config, name, device, dtype) -> ModelBundle:
    """Move, cast, freeze and wrap components into a :class:`ModelBundle`."""
    for net in (unet, vae, text_encoder):
        net.to(device=device)
        if next(net.parameters()).dtype != dtype:  # cast only when needed (diffusers warns on no-op casts)
            net.to(dtype=dtype)
        net.eval().requires_grad_(False)
    return ModelBundle(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=dict(scheduler_config),
        name=name,
        device=device,
        dtype=dtype,
    )


def save_model(bundle: ModelBundle, folder: str | Path) -> Path:
    """Write a bundle as a diffusers folder with safetensors weights (what :func:`load_model` reads)."""
    from diffusers import DDIMScheduler

    folder = Path(folder)
    bundle.unet.save_pretrained(folder / "unet", safe_serialization=True)
    bundle.vae.save_pretrained(folder / "vae", safe_serialization=True)
    bundle.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    bundle.tokenizer.save_pretrained(folder / "tokenizer")
    DDIMScheduler.from_config(bundle.scheduler_config).save_config(folder / "scheduler")
    return folder
