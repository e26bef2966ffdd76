"""What a diffusers model folder declares, read and checked before any of it is loaded.

A model folder is data from elsewhere: its ``model_index.json`` and each component's config name
classes, and a folder can carry Python files (a custom pipeline). locedit loads the components with
its own classes and never imports code from a folder; :func:`check_folder` refuses, naming the file
and the class, a folder whose JSON is unreadable, whose index or configs name classes other than the
Stable Diffusion family's, or which carries Python code (diffusers itself refuses each of these when
its pipelines load such a folder the same way: with the classes given, without remote code).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelLoadError

# component -> (library, classes the family uses); what a config's _class_name / architectures must be
COMPONENT_CLASSES = {
    "unet": ("diffusers", {"UNet2DConditionModel"}),
    "vae": ("diffusers", {"AutoencoderKL"}),
    "text_encoder": ("transformers", {"CLIPTextModel"}),
    "text_encoder_2": ("transformers", {"CLIPTextModelWithProjection"}),
    "tokenizer": ("transformers", {"CLIPTokenizer", "CLIPTokenizerFast"}),
    "tokenizer_2": ("transformers", {"CLIPTokenizer", "CLIPTokenizerFast"}),
}
# the flow families' components (locedit.diffusion.flow_model): the pipeline class -> component -> classes
FLOW_CLASSES = {
    "FluxPipeline": {
        "transformer": ("diffusers", {"FluxTransformer2DModel"}), "vae": ("diffusers", {"AutoencoderKL"}),
        "text_encoder": ("transformers", {"CLIPTextModel"}), "text_encoder_2": ("transformers", {"T5EncoderModel"}),
        "tokenizer": ("transformers", {"CLIPTokenizer", "CLIPTokenizerFast"}),
        "tokenizer_2": ("transformers", {"T5TokenizerFast", "T5Tokenizer"}),
    },
    "StableDiffusion3Pipeline": {
        "transformer": ("diffusers", {"SD3Transformer2DModel"}), "vae": ("diffusers", {"AutoencoderKL"}),
        "text_encoder": ("transformers", {"CLIPTextModelWithProjection"}),
        "text_encoder_2": ("transformers", {"CLIPTextModelWithProjection"}),
        "text_encoder_3": ("transformers", {"T5EncoderModel"}),
        "tokenizer": ("transformers", {"CLIPTokenizer", "CLIPTokenizerFast"}),
        "tokenizer_2": ("transformers", {"CLIPTokenizer", "CLIPTokenizerFast"}),
        "tokenizer_3": ("transformers", {"T5TokenizerFast", "T5Tokenizer"}),
    },
}
PIPELINES = set(FLOW_CLASSES) | {"StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusionInstructPix2PixPipeline",
             "StableDiffusionXLInstructPix2PixPipeline", "StableDiffusionImg2ImgPipeline",
             "StableDiffusionXLImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionDiffEditPipeline"}
# entries of model_index.json that locedit does not load: any of these libraries, a plain class name
OTHER_LIBRARIES = {"diffusers", "transformers", "stable_diffusion", None}


def read_json(path: Path, folder: Path) -> dict:
    """``path`` as a JSON object, or a one-line error naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"model folder {folder}: {path.relative_to(folder)} is not readable JSON "
                             f"({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"model folder {folder}: {path.relative_to(folder)} is not a JSON object")
    return data


def _plain_class(name) -> bool:
    return isinstance(name, str) and name.isidentifier()


def classes_of(folder: Path) -> dict:
    """The component classes the folder's family uses (the Stable Diffusion UNet families', or a flow
    family's by its model_index.json)."""
    path = folder / "model_index.json"
    name = read_json(path, folder).get("_class_name") if path.is_file() else None
    return FLOW_CLASSES.get(name, COMPONENT_CLASSES) if isinstance(name, str) else COMPONENT_CLASSES


def check_index(folder: Path) -> None:
    """model_index.json (when present): a diffusers pipeline of the family, each component's entry
    the class the family uses, every other entry a plain class of a known library."""
    path = folder / "model_index.json"
    if not path.is_file():
        return
    index = read_json(path, folder)
    component_classes = classes_of(folder)
    pipeline = index.get("_class_name")
    if not isinstance(pipeline, str) or pipeline not in PIPELINES:
        raise ModelLoadError(f"model folder {folder}: model_index.json names the pipeline {pipeline!r}, not one of "
                             f"the Stable Diffusion family's ({', '.join(sorted(PIPELINES))}); locedit never "
                             "imports a custom pipeline's code")
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list):
            continue
        if len(value) != 2:
            raise ModelLoadError(f"model folder {folder}: model_index.json entry {key!r} is {value!r}, not "
                                 "[library, class]")
        library, cls = value
        if key in component_classes:
            if library is None and cls is None and key in ("text_encoder_3", "tokenizer_3"):
                continue  # SD3 without T5 (diffusers' text_encoder_3=None)
            want_library, classes = component_classes[key]
            if library != want_library or cls not in classes:
                raise ModelLoadError(f"model folder {folder}: model_index.json gives {key} the class "
                                     f"{library}.{cls}; locedit loads {want_library}.{'/'.join(sorted(classes))}")
        elif key == "scheduler":
            if library != "diffusers" or not _plain_class(cls) or not cls.endswith("Scheduler"):
                raise ModelLoadError(f"model folder {folder}: model_index.json gives the scheduler the class "
                                     f"{library}.{cls}, not a diffusers scheduler")
        elif library not in OTHER_LIBRARIES or (cls is not None and not _plain_class(cls)):
            raise ModelLoadError(f"model folder {folder}: model_index.json entry {key!r} names {library}.{cls}, "
                                 "not a class of diffusers or transformers")


def check_configs(folder: Path, components: tuple[str, ...]) -> None:
    """Each component's config: readable JSON naming the family's class (diffusers' ``_class_name``,
    transformers' ``architectures`` / ``tokenizer_class``)."""
    component_classes = classes_of(folder)
    for comp in components:
        library, classes = component_classes.get(comp, ("diffusers", None))
        if comp == "scheduler":
            path = folder / comp / "scheduler_config.json"
        elif comp.startswith("tokenizer"):
            path = folder / comp / "tokenizer_config.json"
        else:
            path = folder / comp / "config.json"
        if not path.is_file():
            if comp.startswith("tokenizer"):
                continue  # a tokenizer may be its vocabulary files alone
            raise ModelLoadError(f"model folder {folder}: {comp}/ has no {path.name}")
        config = read_json(path, folder)
        rel = path.relative_to(folder)
        if comp == "scheduler":
            cls = config.get("_class_name")
            if not _plain_class(cls) or not cls.endswith("Scheduler"):
                raise ModelLoadError(f"model folder {folder}: {rel} names the class {cls!r}, not a diffusers scheduler")
        elif comp.startswith("tokenizer"):
            cls = config.get("tokenizer_class")
            if cls is not None and cls not in classes:
                raise ModelLoadError(f"model folder {folder}: {rel} names the tokenizer {cls!r}; locedit loads "
                                     f"{'/'.join(sorted(classes))}")
        elif library == "transformers":
            names = config.get("architectures") or []
            if names and not set(names) <= classes:
                raise ModelLoadError(f"model folder {folder}: {rel} names the architecture {names[0]!r}; locedit "
                                     f"loads {'/'.join(sorted(classes))}")
        else:
            cls = config.get("_class_name")
            if cls not in classes:
                raise ModelLoadError(f"model folder {folder}: {rel} names the class {cls!r}; locedit loads "
                                     f"{'/'.join(sorted(classes))} as {comp}")


def check_no_code(folder: Path) -> None:
    """No Python file in the folder or its components: a folder that carries code asks to run it."""
    for path in sorted(folder.glob("*.py")) + sorted(folder.glob("*/*.py")):
        raise ModelLoadError(f"model folder {folder} carries Python code ({path.relative_to(folder)}); locedit "
                             "never imports code from a model folder")


def check_folder(folder: Path, components: tuple[str, ...]) -> None:
    """:func:`check_no_code`, :func:`check_index` and :func:`check_configs`, before any load."""
    check_no_code(folder)
    check_index(folder)
    check_configs(folder, components)
