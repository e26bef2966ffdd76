"""The edit as data: one frozen description of an edit, which the library runs
(:func:`locedit.api.edit`), the command line parses argv into (:func:`locedit.cli.edit.parse_edit`),
the PNG metadata records and :meth:`EditSpec.command` prints back as the ``locedit edit`` line that
reproduces it.

Files are referred to by path (the image, masks, region masks, a saved inversion); boxes by their
``x0,y0,x1,y1`` text. The method's and the inversion's options are their options dataclasses
(None: the defaults of ``preset``, or locedit's defaults without one).
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from typing import Any

DEFAULT_MODEL = "shapes"
DEFAULT_INVERSION = "null-text"


@dataclass(frozen=True)
class EditSpec:
    target: str
    image: str | None = None  # path; optional with from_inversion
    source: str | None = None  # default with from_inversion: the trajectory's prompt
    method: str = "p2p"
    options: Any = None  # the method's options dataclass; None: preset(method.Options, preset)
    inversion: str | None = None  # None: DEFAULT_INVERSION for a method that takes one
    inversion_options: Any = None  # the inversion's options dataclass; None: its preset's
    preset: str | None = None  # "paper" | "official" | None (locedit's defaults)
    from_inversion: str | None = None  # a folder written by ``locedit invert``
    masks: tuple[str, ...] = ()  # mask PNG paths (white = may change); their union is used
    boxes: tuple[str, ...] = ()  # "x0,y0,x1,y1" in input pixels, used like masks
    mask_from: str | None = None  # "diffedit": make the mask from the two prompts
    blend_words: tuple[str, str] | None = None  # local blend from these words' attention
    regions: tuple[str, ...] = ()  # "WORD=mask.png" or "WORD=x0,y0,x1,y1"
    attributes: tuple[str, ...] = ()  # MDE-Edit's attribute words and regions, same form
    binds: tuple[str, ...] = ()  # LocInv: "ADJ:NOUN"
    model: str | None = None  # None: DEFAULT_MODEL (with from_inversion: the trajectory's model)
    vae: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0
    fit: str = "pad"
    npi_null: bool = False
    proximal: float | None = None
    inversion_guidance: int | None = None
    grad_checkpointing: bool = False
    attention_words: tuple[str, ...] | None = None  # record these target words' maps (None: not recorded)
    max_pixels: int | None = None  # input limits (None: locedit.fileio's defaults)
    max_bytes: int | None = None
    mask_rule: str = "half"  # which mask pixels are in: "half" of the range, or "nonzero" (MAG/MDE-Edit's code)

    def replace(self, **changes) -> "EditSpec":
        return dataclasses.replace(self, **changes)

    def command(self, image_name: str | None = None) -> str:
        """The ``locedit edit`` command line that reproduces this edit (``image_name`` stands for the
        image's path, e.g. a placeholder where the image came from a page)."""
        return shlex.join(["locedit", "edit"] + self.argv(image_name))

    def argv(self, image_name: str | None = None) -> list[str]:
        """:meth:`command` as an argument list (without ``locedit edit``)."""
        out: list[str] = []
        image = image_name if image_name is not None else self.image
        if image is not None:
            out.append(str(image))
        for flag, value in (("source", self.source), ("target", self.target), ("from-inversion", self.from_inversion),
                            ("model", self.model), ("vae", self.vae), ("method", self.method),
                            ("preset", self.preset), ("inversion", self.inversion), ("mask-from", self.mask_from)):
            if value is not None:
                out += [f"--{flag}", str(value)]
        out += _changed((("device", self.device, "auto"), ("dtype", self.dtype, "fp32"), ("steps", self.steps, 50),
                         ("guidance", self.guidance, 7.5), ("seed", self.seed, 0), ("fit", self.fit, "pad"),
                         ("proximal", self.proximal, None), ("inversion-guidance", self.inversion_guidance, None),
                         ("max-image-pixels", self.max_pixels, None), ("mask-rule", self.mask_rule, "half")))
        out += _max_bytes(self.max_bytes)
        for flag, values in (("mask", self.masks), ("box", self.boxes), ("region", self.regions),
                             ("attribute", self.attributes), ("bind", self.binds)):
            for v in values:
                out += [f"--{flag}", v]
        if self.blend_words:
            out += ["--blend-words", *self.blend_words]
        if self.attention_words is not None:  # the maps are recorded for an output file
            out += ["--save-attention", "attention.png"] + (["--attention-words", *self.attention_words]
                                                            if self.attention_words else [])
        for flag, on in (("npi-null", self.npi_null), ("grad-checkpointing", self.grad_checkpointing)):
            if on:
                out.append(f"--{flag}")
        out += option_argv(self.options, self.preset)
        out += option_argv(self.inversion_options, self.preset)
        return out


def _changed(triples) -> list[str]:
    """``--flag value`` for each (flag, value, default) whose value is not the default."""
    return [w for flag, value, default in triples if value != default for w in (f"--{flag}", str(value))]


def _max_bytes(max_bytes: int | None) -> list[str]:
    return [] if max_bytes is None else ["--max-image-mb", repr(max_bytes / 2**20)]


def option_argv(options, preset_name: str | None) -> list[str]:
    """The flags that turn ``preset(type(options), preset_name)`` into ``options``."""
    from .options import flag_fields, preset

    if options is None:
        return []
    base = preset(type(options), preset_name)
    out = []
    for f in flag_fields(type(options)):
        value, start = _get(options, f.path), _get(base, f.path)
        if value == start:
            continue
        if isinstance(f.default, bool):
            out.append(f"--{f.flag}" if value else f"--no-{f.flag}")
        elif f.meta.get("repeat"):
            for v in value:
                out += [f"--{f.flag}", _text(v)]
        else:
            out += [f"--{f.flag}", _text(value)]
    return out


def _text(value) -> str:
    """A flag's value as its text: a (word, scale) pair as ``WORD=SCALE``."""
    return "=".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _get(obj, path):
    for name in path:
        obj = getattr(obj, name)
    return obj


DEFAULT_INSTRUCT_MODEL = "shapes-instruct"


@dataclass(frozen=True)
class InstructSpec:
    """An instruction edit (``locedit instruct``): InstructPix2Pix or LIME on an instruct model."""

    instruction: str
    image: str  # path, or a name the caller holds in memory
    method: str = "lime"
    options: Any = None  # the method's options dataclass; None: preset(method.Options, preset)
    preset: str | None = None
    mask: str | None = None  # LIME: the region to edit instead of the one it finds
    model: str = DEFAULT_INSTRUCT_MODEL
    vae: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    steps: int = 100
    seed: int = 0
    fit: str = "pad"
    max_pixels: int | None = None
    max_bytes: int | None = None

    def replace(self, **changes) -> "InstructSpec":
        return dataclasses.replace(self, **changes)

    def command(self, image_name: str | None = None) -> str:
        """The ``locedit instruct`` command line that reproduces this edit."""
        return shlex.join(["locedit", "instruct"] + self.argv(image_name))

    def argv(self, image_name: str | None = None) -> list[str]:
        out = [str(image_name if image_name is not None else self.image), "--instruction", self.instruction]
        out += _changed((("method", self.method, "lime"), ("preset", self.preset, None), ("mask", self.mask, None),
                         ("model", self.model, DEFAULT_INSTRUCT_MODEL), ("vae", self.vae, None),
                         ("device", self.device, "auto"), ("dtype", self.dtype, "fp32"), ("steps", self.steps, 100),
                         ("seed", self.seed, 0), ("fit", self.fit, "pad"), ("max-image-pixels", self.max_pixels, None)))
        return out + _max_bytes(self.max_bytes) + option_argv(self.options, self.preset)


@dataclass(frozen=True)
class FlowSpec:
    """One flow edit (``locedit edit --method NAME`` with a flow editor, or ``locedit flow``;
    :func:`locedit.api.flow_edit`; issue 33): a flow editor of :data:`locedit.flow.FLOW_EDITORS` on a
    FLUX or SD3 model. Light: no torch."""

    image: str
    source: str
    target: str
    model: str
    method: str = "flowedit"
    options: Any = None  # the editor's options dataclass; None: its defaults
    mask: str | None = None  # a mask PNG (white = may change), the image's size
    blend_words: tuple[str, str] | None = None  # a mask from these words' joint-attention maps instead
    vae: str | None = None  # a diffusers VAE folder or hub id in place of the model's
    device: str = "auto"
    dtype: str = "fp32"
    quantize: str | None = None  # "int8": torchao weight-only (locedit.diffusion.quantize)
    offload_text: bool = False  # the text encoders stay on the CPU between encodings
    seed: int = 0
    fit: str = "pad"
    max_pixels: int | None = None
    max_bytes: int | None = None

    def replace(self, **changes) -> "FlowSpec":
        return dataclasses.replace(self, **changes)

    def command(self, image_name: str | None = None) -> str:
        """The ``locedit edit`` command line that reproduces this edit (add ``--out``; ``locedit flow``
        takes the same arguments)."""
        return shlex.join(["locedit", "edit"] + self.argv(image_name))

    def argv(self, image_name: str | None = None) -> list[str]:
        out = [str(image_name if image_name is not None else self.image), "--method", self.method,
               "--source", self.source, "--target", self.target, "--model", self.model]
        out += _changed((("device", self.device, "auto"), ("dtype", self.dtype, "fp32"), ("seed", self.seed, 0),
                         ("fit", self.fit, "pad"), ("mask", self.mask, None), ("vae", self.vae, None),
                         ("quantize", self.quantize, None),
                         ("max-image-pixels", self.max_pixels, None)))
        out += _max_bytes(self.max_bytes)
        if self.blend_words:
            out += ["--blend-words", *self.blend_words]
        if self.offload_text:
            out.append("--offload-text")
        return out + option_argv(self.options, None)
