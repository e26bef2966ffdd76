"""Load a Stable-Diffusion-family model in diffusers format (local folder or hub id).

Safetensors only: a component whose folder holds only pickle weights (``.bin``, ``.ckpt``,
``.pt``, ``.pth``) is refused, since unpickling runs arbitrary code. Built-in models (the tiny
random one, and the bundled shapes models once present) are looked up in :data:`BUILTIN_MODELS`
before anything touches the disk or the network.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Callable

import torch

from ..errors import ModelLoadError
from .folders import FLOW_CLASSES, check_folder, read_json
from .model import ModelBundle, finish_bundle
from .names import BUILTIN_MODEL_NAMES, BUNDLED_DIR, DTYPE_NAMES

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_WEIGHT_FOLDERS = ("unet", "vae", "text_encoder")
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _tiny_random(device, dtype) -> ModelBundle:
    from .tiny import tiny_bundle

    return tiny_bundle(seed=0, device=device, dtype=dtype)




def _bundled(name: str) -> Callable[[torch.device, torch.dtype], ModelBundle]:
    """Loader for a model shipped inside the package (``locedit/models/<name>``): a UNet folder as a
    :class:`ModelBundle`, a FLUX one (shapes-flow) as a :class:`~.flow_model.FlowBundle`."""

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
    "shapes-flow": _bundled("shapes-flow"),  # a FluxPipeline folder: loaded as a FlowBundle
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


def _is_sdxl(folder: Path) -> bool:
    """An SDXL-layout folder: a second text encoder beside the first (base and its InstructPix2Pix
    variant; the refiner, which has only the second encoder, is not an editing model)."""
    return (folder / "text_encoder_2").is_dir()


def _model_index(folder: Path) -> dict:
    import json

    path = folder / "model_index.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None


def check_safetensors(folder: Path, weights: tuple[str, ...] | None = None, others: tuple[str, ...] | None = None) -> None:
    """Refuse a diffusers folder whose weight components are missing or pickle-only (``weights``:
    the components with weights, ``others`` those without; default: the UNet families')."""
    xl = _is_sdxl(folder)
    if weights is None:
        weights = _WEIGHT_FOLDERS + (("text_encoder_2",) if xl else ())
    if others is None:
        others = ("tokenizer", "scheduler") + (("tokenizer_2",) if xl else ())
    for comp in weights:
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
    for comp in others:
        if not (folder / comp).is_dir():
            raise ModelLoadError(f"model folder {folder} has no {comp}/ component")


def load_model(model: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32",
               vae: str | None = None, offload_text: bool = False, quantize: str | None = None) -> ModelBundle:
    """Load a model by built-in name, local diffusers folder or hub id.

    A FLUX or Stable Diffusion 3 folder (``model_index.json`` naming ``FluxPipeline`` or
    ``StableDiffusion3Pipeline``) loads as a :class:`~locedit.diffusion.flow_model.FlowBundle`.

    Supports SD v1.x and v2.x layouts (epsilon and v-prediction, read from the scheduler config)
    and SDXL's (a folder with ``text_encoder_2``/``tokenizer_2``: base, or an InstructPix2Pix UNet
    with 8 input channels in the same layout). ``vae`` replaces the folder's VAE with another
    diffusers VAE folder or hub id (SDXL's fp16-safe one, ``madebyollin/sdxl-vae-fp16-fix``).
    The networks are put in eval mode with gradients off; methods that optimise do so on latents
    or embeddings, never on weights.

    SDXL at fp16/bf16: its VAE overflows in half precision, so the VAE stays float32 when its config
    says ``force_upcast`` (as the SDXL pipelines upcast it to decode) unless a replacement ``vae``
    is given, which runs in the requested dtype.

    FLUX and SD3 folders only: ``offload_text`` keeps the text encoders on the CPU (moved to the
    device for each encoding), ``quantize`` ("int8") quantises the transformer's weights on the CPU
    before it moves (torchao; :mod:`.quantize`).
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype)
    if model in BUILTIN_MODELS:
        if offload_text or quantize:
            raise ModelLoadError(f"--quantize and --offload-text apply to FLUX and SD3 folders and hub ids, not the "
                                 f"built-in {model!r}")
        if vae is not None:
            raise ModelLoadError(f"--vae replaces a model folder's VAE; the built-in model {model!r} has its own")
        return BUILTIN_MODELS[model](dev, dt)
    folder = _locate(model)
    from .flow_model import family_of

    if (folder / "model_index.json").is_file() and family_of(read_json(folder / "model_index.json", folder)):
        return _load_flow(model, folder, dev, dt, vae, offload_text, quantize)
    if offload_text or quantize:
        raise ModelLoadError(f"--quantize and --offload-text apply to FLUX and SD3 models; {model!r} is a UNet model")
    check_safetensors(folder)
    xl = _is_sdxl(folder)
    check_folder(folder, COMPONENTS + (("text_encoder_2", "tokenizer_2") if xl else ()))
    vae_folder = None
    if vae is not None:
        vae_folder = _locate(vae)
        if not any(f.suffix == ".safetensors" for f in vae_folder.iterdir()):
            raise ModelLoadError(f"VAE {vae!r}: {vae_folder} holds no .safetensors weights")
    try:
        with _no_loading_bars():  # the library says nothing while it loads; the caller's progress is its own
            parts = _components(folder, vae_folder, xl, dt)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"model {model!r} could not be loaded: {_load_failure(exc)}") from None
    unet, vae_net, text_encoder, tokenizer, scheduler_config, extra = parts
    if xl and unet.config.addition_embed_type != "text_time":
        raise ModelLoadError(f"model {model!r} has two text encoders but its UNet takes no pooled text embedding "
                             f"(addition_embed_type {unet.config.addition_embed_type!r}, SDXL's is 'text_time')")
    return finish_bundle(unet, vae_net, text_encoder, tokenizer, scheduler_config, name=model, device=dev, dtype=dt,
                         **extra)


def _load_flow(model: str, folder: Path, dev: torch.device, dt: torch.dtype, vae: str | None,
               offload_text: bool = False, quantize: str | None = None):
    """A FLUX or SD3 diffusers folder as a :class:`~locedit.diffusion.flow_model.FlowBundle`: the
    folder read and checked first (classes, no code, safetensors only), then diffusers' pipeline
    class loads the components the index names, which the check held to the family's - on the CPU;
    ``quantize`` quantises the transformer's weights there (:mod:`.quantize`), then the transformer
    and the VAE go to ``dev``, and the text encoders too unless ``offload_text`` (they then come to
    ``dev`` only for each encoding), so the accelerator never holds more than it will use."""
    from .flow_model import FlowBundle, family_of

    index = read_json(folder / "model_index.json", folder)
    name = index["_class_name"]
    present = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None]
    components = tuple(c for c in FLOW_CLASSES[name] if c in present) + ("scheduler",)
    weighted = tuple(c for c in components if c.startswith(("transformer", "vae", "text_encoder")))
    check_safetensors(folder, weighted, tuple(c for c in components if c not in weighted))
    check_folder(folder, components)
    import diffusers

    pipeline_class = getattr(diffusers, name)
    import inspect

    # components the folder leaves out (SD3 without T5, no image encoder): None, as diffusers' pipelines take
    extra = {k: None for k in inspect.signature(pipeline_class.__init__).parameters
             if k not in ("self", "scheduler") and index.get(k) in (None, [None, None])}
    if vae is not None:
        from diffusers import AutoencoderKL

        extra["vae"] = AutoencoderKL.from_pretrained(_locate(vae), use_safetensors=True, torch_dtype=dt)
    try:
        with _no_loading_bars():
            pipe = pipeline_class.from_pretrained(folder, use_safetensors=True, dtype=dt, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"model {model!r} could not be loaded: {_load_failure(exc)}") from None
    pipe.set_progress_bar_config(disable=True)
    encoders = [getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")]
    for part in (pipe.transformer, pipe.vae, *encoders):
        if part is not None:
            part.eval().requires_grad_(False)
    if quantize is not None:
        from .quantize import quantize as quantize_weights

        quantize_weights(pipe, quantize)
    for part in (pipe.transformer, pipe.vae, *([] if offload_text else encoders)):
        if part is not None:
            part.to(dev)
    native = length = None
    if (folder / "training.json").is_file():  # locedit's own training output names its trained side
        size = read_json(folder / "training.json", folder).get("image_size")
        native = int(size) if isinstance(size, int) and size > 0 else None
        length = _trained_text_length(pipe)
    return FlowBundle(pipe, family_of(index), name=model, offload_text=offload_text, native_size=native,
                      max_sequence_length=length)


def _trained_text_length(pipe) -> int | None:
    """The T5 length a model of locedit's own training was trained at: its T5 tokenizer's
    ``model_max_length`` (shapes-flow: 32). diffusers' pipelines pad T5 to their own default (FLUX 512,
    SD3 256) whatever the tokenizer says, which would show such a model 480 padding tokens it never saw
    in training; None (the pipeline's default) where there is no T5."""
    tok = getattr(pipe, "tokenizer_3", None) or getattr(pipe, "tokenizer_2", None)
    n = getattr(tok, "model_max_length", None) if type(tok).__name__.startswith("T5") else None
    return int(n) if isinstance(n, int) and 0 < n <= 512 else None


_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
                            r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)")


def _load_failure(exc: Exception) -> str:
    """One line for a failed load: a weight of the wrong shape names the tensor and both shapes."""
    text = str(exc)
    found = _SIZE_MISMATCH.search(text)
    if found:
        name, got, want = found.groups()
        which = re.search(r"state_dict for (\w+)", text)
        return (f"weight {name!r}{' of its ' + which.group(1) if which else ''} is ({got}) in the file but "
                f"({want}) by its config.json")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:200]


@contextlib.contextmanager
def _no_loading_bars():
    """diffusers' and transformers' own loading bars off, restored as they were in ``finally``."""
    import diffusers.utils.logging as d
    import transformers.utils.logging as t

    was = [(lib, lib.is_progress_bar_enabled()) for lib in (d, t)]
    for lib, _ in was:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, on in was:
            if on:
                lib.enable_progress_bar()


def _components(folder, vae_folder, xl: bool, dt):
    """(unet, vae, text encoder, tokenizer, scheduler config, SDXL extras) of a diffusers folder."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    # diffusers wants `accelerate` for its low-memory loading and warns on every load without it
    low_mem = importlib.util.find_spec("accelerate") is not None
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True, torch_dtype=dt,
                                                low_cpu_mem_usage=low_mem)
    if vae_folder is None:
        # SDXL's own VAE overflows in half precision: float32 when its config asks (the pipeline's upcast)
        upcast = xl and dt != torch.float32 and AutoencoderKL.load_config(folder, subfolder="vae").get("force_upcast", False)
        vae_net = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True,
                                                torch_dtype=torch.float32 if upcast else dt, low_cpu_mem_usage=low_mem)
    else:
        vae_net = AutoencoderKL.from_pretrained(vae_folder, use_safetensors=True, torch_dtype=dt,
                                                low_cpu_mem_usage=low_mem)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", use_safetensors=True, dtype=dt)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    extra = {}
    if xl:
        extra["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            folder, subfolder="text_encoder_2", use_safetensors=True, dtype=dt)
        extra["tokenizer_2"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
        # diffusers' SDXL pipelines default to True when the index does not say
        extra["force_zeros_for_empty_prompt"] = bool(_model_index(folder).get("force_zeros_for_empty_prompt", True))
        extra["vae_dtype"] = vae_net.dtype
    scheduler_config = dict(DDIMScheduler.load_config(folder, subfolder="scheduler"))
    return unet, vae_net, text_encoder, tokenizer, scheduler_config, extra


def save_model(bundle: ModelBundle, folder: str | Path) -> Path:
    """Write a bundle as a diffusers folder with safetensors weights (what :func:`load_model` reads)."""
    import json

    import diffusers

    folder = Path(folder)
    bundle.unet.save_pretrained(folder / "unet", safe_serialization=True)
    bundle.vae.save_pretrained(folder / "vae", safe_serialization=True)
    bundle.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    bundle.tokenizer.save_pretrained(folder / "tokenizer")
    # the scheduler class the config came with (SDXL ships Euler's); locedit reads only its betas
    scheduler = bundle.scheduler_config.get("_class_name", "DDIMScheduler")
    cls = getattr(diffusers, scheduler, None) or diffusers.DDIMScheduler
    cls.from_config(bundle.scheduler_config).save_config(folder / "scheduler")
    # model_index.json: what diffusers' DiffusionPipeline.from_pretrained reads
    xl, ip2p = bundle.text_encoder_2 is not None, bundle.unet.config.in_channels == 8
    index = {
        "_class_name": ("StableDiffusionXL" if xl else "StableDiffusion") + ("InstructPix2PixPipeline" if ip2p else "Pipeline"),
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", scheduler],
    }
    if xl:
        bundle.text_encoder_2.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
        bundle.tokenizer_2.save_pretrained(folder / "tokenizer_2")
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"],
                     force_zeros_for_empty_prompt=bundle.force_zeros_for_empty_prompt)
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
