"""The library's entry for an edit described as data: :func:`edit` runs an :class:`EditSpec`.

It reads the spec's files (image, masks, region masks, a saved inversion) with the input limits,
checks everything the inputs alone can show before the model is loaded, loads the model (or takes
the caller's ``bundle``), fits the image to the model's size and back, runs
:func:`locedit.pipeline.edit`, and returns the edit at the input size with the metadata that
records it. The command line (``locedit edit``) is this plus its flags and its output files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from .errors import LoceditError
from .spec import DEFAULT_MODEL, EditSpec, FlowSpec

if TYPE_CHECKING:  # torch is imported where the work starts: a bad input is refused before it loads
    import torch


class _Saves:
    """What a result at the input size offers beside its tensors."""

    @property
    def image(self):
        """The edit as a PIL image (RGB, the input's size)."""
        from PIL import Image

        a = (self.edited[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype("uint8")
        return Image.fromarray(a)

    def save(self, path) -> str:
        """Write the edit to ``path`` (.png with locedit's metadata as text chunks, or .jpg / .webp),
        atomically."""
        from .fileio import check_output, save_png

        check_output(path, "path")
        save_png(self.edited, path, self.meta)
        return str(path)


@dataclass
class Edited(_Saves):
    """An edit's result at the input image's size: ``edited`` and ``source`` (1, 3, H, W) in [0, 1];
    ``mask`` (1, 1, H, W) the user's or DiffEdit's mask, if any; ``meta`` what the PNG records."""

    spec: EditSpec
    edited: torch.Tensor
    source: torch.Tensor
    mask: torch.Tensor | None
    blend_mask: torch.Tensor | None  # (1, 1, H, W) the local blend's last mask, if any
    meta: dict
    stats: dict
    attention: dict | None = None  # word -> (s, s) map (with spec.attention_words)
    image_size: int = 0

    def panel(self) -> torch.Tensor:
        """(1, 3, H, 3W): source | edit | mask (the user mask, or the local-blend mask, or the edit's
        change, normalised, when there is neither)."""
        import torch

        mask = self.mask if self.mask is not None else self.blend_mask
        if mask is None:
            diff = (self.edited - self.source).abs().amax(dim=1, keepdim=True)
            mask = diff / diff.max().clamp_min(1e-6)
        return torch.cat([self.source, self.edited, mask.expand(-1, 3, -1, -1)], dim=3)

    def attention_grid(self) -> torch.Tensor:
        """(1, 3, S, S * words): each recorded word's map, max-normalised, nearest-upscaled to the
        model's size S."""
        import torch
        import torch.nn.functional as F

        tiles = []
        for m in (self.attention or {}).values():
            m = m.float().cpu()
            m = m / m.max().clamp_min(1e-12)
            tiles.append(F.interpolate(m[None, None], size=(self.image_size,) * 2, mode="nearest").expand(-1, 3, -1, -1))
        return torch.cat(tiles, dim=3)


def resolve_options(spec: EditSpec):
    """(method class, method options, uses an inversion, inversion options or None) of ``spec``, with
    the preset applied where the spec gives no options object."""
    from .inversion import INVERSIONS
    from .methods import METHODS
    from .options import preset

    if spec.method not in METHODS:
        raise LoceditError(f"unknown method {spec.method!r}; choose one of {', '.join(METHODS)}")
    method = METHODS[spec.method]
    options = spec.options if spec.options is not None else preset(method.Options, spec.preset)
    inversion = spec.inversion or method.inversion
    if inversion not in INVERSIONS:
        raise LoceditError(f"unknown inversion {inversion!r}; choose one of {', '.join(INVERSIONS)}")
    uses_inversion = method.takes_inversion(options)
    if spec.inversion and not uses_inversion:
        raise LoceditError(f"--inversion is not used by --method {spec.method} (it makes its own inversion"
                           f"{' with these options' if 'inversion' in method.uses else ''})")
    inversion_options = None
    if uses_inversion and not spec.from_inversion:
        inversion_options = (spec.inversion_options if spec.inversion_options is not None
                             else preset(INVERSIONS[inversion].Options, spec.preset))
    return method, options, uses_inversion, inversion_options


def given_inputs(spec: EditSpec) -> set[str]:
    """The names of :data:`locedit.methods.base.INPUTS` the spec gives."""
    given = {"mask"} if spec.masks or spec.boxes or spec.mask_from else set()
    for name, value in (("blend_words", spec.blend_words), ("regions", spec.regions),
                        ("attributes", spec.attributes), ("pairs", spec.binds)):
        if value:
            given.add(name)
    return given


def check(spec: EditSpec) -> None:
    """Every check the spec alone allows (no file read, no model)."""
    from .methods import METHODS

    if not spec.target.strip():
        raise LoceditError("--target is empty")
    if spec.source is not None and not spec.source.strip():
        raise LoceditError("--source is empty")
    if spec.method in METHODS:
        METHODS[spec.method].check_given(given_inputs(spec))
    if spec.mask_from and (spec.masks or spec.boxes):
        raise LoceditError("--mask-from makes the mask: not with --mask or --box")
    if spec.inversion and spec.from_inversion:
        raise LoceditError("--inversion and --from-inversion: the saved trajectory is already inverted")
    if not spec.from_inversion and not spec.image:
        raise LoceditError("edit needs IMAGE (or --from-inversion DIR)")
    if not spec.from_inversion and not spec.source:
        raise LoceditError("edit needs --source (the prompt that describes the input image)")
    for text in spec.binds:
        adj, sep, noun = text.partition(":")
        if not sep or not adj.strip() or not noun.strip():
            raise LoceditError(f"--bind {text!r} is not ADJ:NOUN")


# the built-in shapes models, each with a real model of its kind to point to for other images
SHAPES_MODELS = {"shapes": "CompVis/stable-diffusion-v1-4", "shapes-instruct": "timbrooks/instruct-pix2pix",
                 "shapes-flow": "black-forest-labs/FLUX.1-dev"}


def check_vocabulary(model: str, texts: dict[str, str]) -> None:
    """The built-in shapes models know the shapes world's words only: a prompt with any other word is
    refused before any work, naming the words, listing the known ones and pointing to a real model."""
    if model not in SHAPES_MODELS:
        return
    from .world.scene import VOCABULARY

    known = set(VOCABULARY)
    unknown = []
    for text in texts.values():
        for word in text.lower().split():
            word = word.strip(".,;:!?'\"()")
            if word and word not in known and word not in unknown:
                unknown.append(word)
    if unknown:
        flags = " and ".join(f"--{k}" for k, t in texts.items() if any(w in t.lower() for w in unknown))
        raise LoceditError(
            f"the built-in {model!r} model knows only the shapes world, not {', '.join(map(repr, unknown))} in "
            f"{flags}; it knows: {' '.join(sorted(known))}. For other images use a real model: --model with a "
            f"diffusers folder or hub id (e.g. --model {SHAPES_MODELS[model]})")


_MASK_NOT_READ = object()  # the light request's mask: given, not yet read (check_text tests ``is None`` only)


class _Word(NamedTuple):
    """A region's word before its mask is read (what :meth:`Method.check_text` reads of a region)."""

    word: str
    mask: None = None


def check_text(spec: EditSpec, method, options, options_for_edit, bundle=None) -> None:
    """The method's prompt checks (:meth:`locedit.methods.base.Method.check_text`) on the model's
    tokenizer alone, before the model loads and before any mask is read (torch is not imported):
    word counts of a word swap, blend, region, negative and MasaCtrl words in their prompts, prompt
    lengths. Skipped where the tokenizer is not on this disk (a hub id, a model built in code) or the
    source prompt comes from a saved inversion: the same checks then run on the loaded model."""
    from .diffusion.textside import TextSide, load_text_side
    from .inversion import uncond_of
    from .methods import EditRequest

    if not spec.source or spec.from_inversion:
        return
    text = TextSide(bundle.tokenizer, bundle.name) if bundle is not None else load_text_side(spec.model or DEFAULT_MODEL)
    if text is None:
        return
    words = lambda refs: tuple(_Word(r.partition("=")[0].strip()) for r in refs)  # noqa: E731
    pairs = tuple(tuple(p.strip() for p in b.partition(":")[::2]) for b in spec.binds)
    uncond = uncond_of(method.takes_inversion(options), spec.inversion or method.inversion, None,
                       options_for_edit.npi_null)
    mask = _MASK_NOT_READ if "mask" in given_inputs(spec) else None
    request = EditRequest(spec.source, spec.target, mask, tuple(spec.blend_words) if spec.blend_words else None,
                          words(spec.regions), words(spec.attributes), pairs, spec.steps, options_for_edit.guidance,
                          spec.seed, uncond)
    method.check_text(text, request, options)


def edit_options(spec: EditSpec):
    from .options import EditOptions

    try:
        return EditOptions(guidance=spec.guidance, npi_null=spec.npi_null, proximal_quantile=spec.proximal,
                           inversion_guidance_t=spec.inversion_guidance, grad_checkpointing=spec.grad_checkpointing)
    except ValueError as exc:
        raise LoceditError(str(exc)) from None


@dataclass
class _Inputs:
    """The spec's files, read and checked at the input size."""

    image: torch.Tensor | None
    source: str
    height: int
    width: int
    mask: torch.Tensor | None
    regions: list
    attributes: list
    trajectory: object = None
    manifest: dict | None = None


def _limits(spec) -> dict:
    return {k: v for k, v in (("max_pixels", spec.max_pixels), ("max_bytes", spec.max_bytes)) if v is not None}


def as_image(value) -> torch.Tensor:
    """An in-memory image: (H, W, 3 or 4) uint8 array, PIL image or (1, 3, H, W) float tensor ->
    (1, 3, H, W) float in [0, 1] (:func:`locedit.pipeline.as_input`)."""
    from .pipeline import as_input

    return as_input(value).float()


def as_mask(value) -> torch.Tensor:
    """An in-memory mask: (H, W) bool array or (1, 1, H, W) tensor -> (1, 1, H, W) binary float."""
    import torch

    if isinstance(value, torch.Tensor):
        return (value.float() > 0.5).float()
    import numpy as np

    return torch.from_numpy(np.asarray(value).astype(bool).astype(np.float32))[None, None]


class Files:
    """The spec's file references, read from ``memory`` (name -> image or mask, what a web page
    holds) where a name is there, else from the filesystem with the input limits."""

    def __init__(self, memory: dict | None, limits: dict, rule: str = "half"):
        self.memory, self.limits, self.rule = memory or {}, limits, rule

    def image(self, ref: str) -> torch.Tensor:
        from .fileio import load_image

        return as_image(self.memory[ref]) if ref in self.memory else load_image(ref, **self.limits)

    def mask(self, ref: str) -> torch.Tensor:
        from .fileio import load_mask

        return as_mask(self.memory[ref]) if ref in self.memory else load_mask(ref, **self.limits, rule=self.rule)

    def check_sizes(self, spec) -> None:
        """Every mask file the same size as the image and not empty, every box inside it, before
        torch is imported (the image's header only; the masks decoded with NumPy): a wrong mask is
        refused at once."""
        from .fileio import MaskError, box_bounds, header_size, looks_like_box, mask_array

        if not spec.image or spec.image in self.memory:
            return
        height, width = header_size(spec.image, "image", **self.limits)
        for box in spec.boxes:
            box_bounds(box, height, width)
        for text in spec.regions + spec.attributes:
            word, sep, where = text.partition("=")
            if not sep or not word.strip() or not where:
                raise MaskError(f"region {text!r} is not WORD=MASK.png or WORD=x0,y0,x1,y1")
        wheres = list(spec.masks) + [r.partition("=")[2] for r in spec.regions + spec.attributes]
        for where in wheres:
            if where in self.memory:
                continue
            if looks_like_box(where):
                box_bounds(where, height, width)
                continue
            h, w = header_size(where, "mask", **self.limits)
            if (h, w) != (height, width):
                raise MaskError(f"mask {where!r} is {w}x{h} but the image is {width}x{height}")
            if not mask_array(where, **self.limits, rule=self.rule).any():
                raise MaskError(f"mask {where!r} is empty (no white pixel)")

    def region(self, text: str, height: int, width: int):
        from .fileio import check_user_mask, region_spec

        word, sep, where = text.partition("=")
        if sep and word.strip() and where in self.memory:
            m = as_mask(self.memory[where])
            check_user_mask(m, where, height, width)
            return word.strip(), m
        return region_spec(text, height, width, **self.limits, rule=self.rule)


def _check_saved(spec: EditSpec, trajectory) -> None:
    """A saved trajectory's inversion is one locedit has (or a method that makes its own); ``--steps``,
    when given (not the default), must be its steps: the edit runs on the trajectory's schedule."""
    from .inversion import INVERSIONS
    from .methods import METHODS

    where = f"--from-inversion {str(spec.from_inversion)!r}"
    if trajectory.method not in INVERSIONS and trajectory.method not in METHODS:
        raise LoceditError(f"{where} names an unknown inversion {trajectory.method!r}; locedit has "
                           f"{', '.join(INVERSIONS)}")
    if spec.steps != EditSpec.steps and spec.steps != trajectory.num_steps:
        raise LoceditError(f"--steps {spec.steps}: {where} was inverted with {trajectory.num_steps} steps and the "
                           "edit runs on them (omit --steps)")


def read_inputs(spec: EditSpec, memory: dict | None = None) -> _Inputs:
    """Read the image, masks, boxes, regions and a saved inversion (``memory``: see :class:`Files`)."""
    import torch

    from .fileio import box_mask, check_user_mask
    from .inversion import Trajectory

    files = Files(memory, _limits(spec), spec.mask_rule)
    trajectory = manifest = None
    if spec.from_inversion:
        trajectory, manifest = Trajectory.load(spec.from_inversion)
        _check_saved(spec, trajectory)
    image = files.image(spec.image) if spec.image else None
    if image is not None:
        height, width = image.shape[-2:]
    else:
        height, width = manifest.get("image", {}).get("height"), manifest.get("image", {}).get("width")
    masks = [files.mask(p) for p in spec.masks] + [box_mask(b, height, width) for b in spec.boxes]
    for path, m in zip(list(spec.masks) + list(spec.boxes), masks):
        check_user_mask(m, path, height, width)
    return _Inputs(image, spec.source or trajectory.prompt, height, width,
                   torch.stack(masks).amax(dim=0) if masks else None,
                   [files.region(s, height, width) for s in spec.regions],
                   [files.region(s, height, width) for s in spec.attributes], trajectory, manifest)


def load_spec_model(spec: EditSpec, bundle=None, trajectory=None):
    """The spec's model (``bundle`` when the caller holds it), its steps checked against the scheduler."""
    from .diffusion import load_model

    if bundle is not None and spec.vae:
        raise LoceditError("--vae applies when the model is loaded; this session's model is loaded already")
    name = spec.model or (trajectory.model if trajectory is not None and trajectory.model else DEFAULT_MODEL)
    bundle = bundle or load_model(name, spec.device, spec.dtype, vae=spec.vae)
    from .diffusion.flow_model import check_family
    from .methods import METHODS

    if spec.method in METHODS:
        check_family(bundle, METHODS[spec.method].families, f"--method {spec.method}")
    try:
        bundle.steps(spec.steps)
    except ValueError as exc:
        raise LoceditError(f"--steps {spec.steps}: {exc}") from None
    if trajectory is not None:
        if trajectory.model and trajectory.model != bundle.name:
            raise LoceditError(f"the trajectory was made with model {trajectory.model!r}, not {bundle.name!r} "
                               "(pass --model)")
        trajectory.check_against(bundle)
    return bundle


def _diffedit_mask(bundle, fitted, source: str, spec: EditSpec):
    import torch

    from .methods.diffedit import DiffEditOptions, diffedit_mask

    with torch.no_grad():
        small = diffedit_mask(bundle, bundle.encode_image(fitted), source, spec.target, spec.steps, DiffEditOptions(),
                              spec.seed)
    if not small.any():
        raise LoceditError("the DiffEdit mask is empty: the two prompts' noise estimates differ nowhere above "
                           "its threshold")
    return torch.nn.functional.interpolate(small, size=(bundle.image_size,) * 2).cpu()  # nearest


def _record_words(spec: EditSpec, method, inputs: _Inputs) -> tuple[str, ...]:
    """The target words whose maps are recorded: the spec's, else the region, attribute or blend
    words, else the words the target adds (at most four)."""
    if spec.attention_words is None:
        return ()
    if spec.attention_words:
        return tuple(spec.attention_words)
    words = [w for w, _ in inputs.regions + inputs.attributes] if "source_regions" not in method.uses else []
    if not words and spec.blend_words:
        words = [spec.blend_words[1]]
    if not words:
        seen = {w.lower() for w in inputs.source.split()}
        words = [w for w in spec.target.split() if w.lower() not in seen][:4]
    return tuple(words)


def edit(spec: EditSpec, *, files: dict | None = None, bundle=None, progress=None, cache: dict | None = None,
         before_load=None) -> Edited:
    """Run ``spec``: every check the inputs allow comes before the model is loaded (``files``: images
    and masks held in memory under the names the spec gives, :class:`Files`; ``bundle``: a model the
    caller holds; ``progress``: :mod:`locedit.progress`'s interface; ``cache``: the caller's inversion
    cache, :func:`locedit.pipeline.edit`; ``before_load``: called once the inputs are checked, before
    the model loads: an edge's own set-up, such as the command line's)."""
    check(spec)
    method, options, uses_inversion, inversion_options = resolve_options(spec)
    options_for_edit = edit_options(spec)
    if spec.grad_checkpointing:
        from .methods.base import check_grad_checkpointing

        check_grad_checkpointing(method, options, spec.inversion or method.inversion if uses_inversion else None,
                                 bool(spec.from_inversion))
    Files(files, _limits(spec), spec.mask_rule).check_sizes(spec)  # headers, masks by NumPy: torch not loaded yet
    if bundle is None and (spec.model or not spec.from_inversion):  # the model is known: check its words now
        check_vocabulary(spec.model or DEFAULT_MODEL, {"source": spec.source, "target": spec.target})
    if bundle is not None:  # a model the caller holds: refuse another family before reading its tokenizer
        from .diffusion.flow_model import check_family

        check_family(bundle, method.families, f"--method {spec.method}")
    check_text(spec, method, options, options_for_edit, bundle)
    import torch  # the checks that need no pixel are done

    from . import pipeline
    from .imaging import Fit
    from .masks import Region

    pairs = [tuple(p.strip() for p in b.partition(":")[::2]) for b in spec.binds]
    inputs = read_inputs(spec, files)
    model = bundle.name if bundle is not None else spec.model or (
        inputs.trajectory.model if inputs.trajectory is not None and inputs.trajectory.model else DEFAULT_MODEL)
    check_vocabulary(model, {"source": inputs.source, "target": spec.target})
    if before_load is not None:
        before_load()
    bundle = load_spec_model(spec, bundle, inputs.trajectory)
    mode = inputs.manifest["image"].get("fit", spec.fit) if inputs.manifest else spec.fit
    fit = Fit.plan(inputs.height, inputs.width, bundle.image_size, mode)
    fitted = fit.to_model(inputs.image) if inputs.image is not None else None
    mask, fitted_mask = inputs.mask, fit.to_model(inputs.mask, binary=True) if inputs.mask is not None else None
    if spec.mask_from:
        if mask is not None:
            raise LoceditError("--mask-from makes the mask: not with --mask or --box")
        if fitted is None:
            raise LoceditError("--mask-from needs IMAGE (the mask is made from it)")
        fitted_mask = _diffedit_mask(bundle, fitted, inputs.source, spec)
        mask = fit.from_model(fitted_mask)
    result = pipeline.edit(
        bundle, fitted, inputs.source, spec.target, method=spec.method, options=options,
        inversion=spec.inversion or method.inversion, inversion_options=inversion_options,
        trajectory=inputs.trajectory, mask=fitted_mask, blend_words=spec.blend_words,
        regions=[Region(w, fit.to_model(m, binary=True)) for w, m in inputs.regions],
        attributes=[Region(w, fit.to_model(m, binary=True)) for w, m in inputs.attributes], pairs=pairs,
        record_words=_record_words(spec, method, inputs), num_steps=spec.steps, edit_options=options_for_edit,
        seed=spec.seed, progress=progress, cache=cache)
    blend = result.sample.blend_mask
    blend = (fit.from_model(torch.nn.functional.interpolate(blend.float().cpu(), size=(bundle.image_size,) * 2))
             if blend is not None else None)
    source_view = inputs.image if inputs.image is not None else fit.from_model(result.source.cpu())
    meta = metadata(spec, bundle, result, options, inversion_options, options_for_edit, uses_inversion, inputs.source,
                    fit.mode)
    return Edited(spec, fit.from_model(result.edited), source_view, mask, blend, meta, result.stats,
                  result.stats.pop("attention", None), bundle.image_size)


def metadata(spec: EditSpec, bundle, result, options, inversion_options, options_for_edit, uses_inversion: bool,
             source: str, fit_mode: str) -> dict:
    """What the output PNG records of the edit."""
    from . import __version__
    from .options import describe

    meta = {
        "command": spec.command(), "source": source, "target": spec.target, "model": bundle.name, "method": spec.method,
        "preset": spec.preset, "options": describe(options),
        "steps": result.trajectory.num_steps, "seed": spec.seed, "guidance": spec.guidance,
        "fit": fit_mode, "dtype": spec.dtype, "locedit_version": __version__,
    }
    if spec.vae:
        meta["vae"] = spec.vae
    if spec.image:
        meta["input"] = os.path.basename(spec.image)
    if uses_inversion:
        meta["inversion"] = result.trajectory.method
        if spec.from_inversion:
            meta["from_inversion"] = str(spec.from_inversion)
        else:
            meta["inversion_options"] = describe(inversion_options)
    extras = {k: v for k, v in describe(options_for_edit).items() if k != "guidance" and v not in (None, False)}
    if extras:
        meta["edit_options"] = extras
    for key, value in (("mask", [os.path.basename(p) for p in spec.masks]), ("box", list(spec.boxes)),
                       ("blend_words", list(spec.blend_words or [])), ("region", list(spec.regions)),
                       ("attribute", list(spec.attributes)), ("bind", list(spec.binds)),
                       ("mask_from", spec.mask_from)):
        if value:
            meta[key] = value
    return meta


@dataclass
class Instructed(_Saves):
    """An instruction edit at the input size: ``edited``, ``source`` (1, 3, H, W); ``roi`` (1, 1, H, W)
    the region LIME edited, if the method finds one."""

    spec: object
    edited: torch.Tensor
    source: torch.Tensor
    roi: torch.Tensor | None
    meta: dict
    stats: dict

    def panel(self) -> torch.Tensor:
        """(1, 3, H, 3W): source | edit | region (or the edit's change where there is none)."""
        import torch

        third = self.roi if self.roi is not None else (self.edited - self.source).abs().amax(1, keepdim=True)
        return torch.cat([self.source, self.edited, third.expand(-1, 3, -1, -1)], dim=3)


def _check_instruct_files(spec, files: dict | None) -> None:
    """The image's and mask's headers (existence, type, limits, the mask's size), nothing decoded."""
    from .fileio import MaskError, header_size

    memory = files or {}
    if spec.image in memory:
        return
    height, width = header_size(spec.image, "image", **_limits(spec))
    if spec.mask and spec.mask not in memory:
        h, w = header_size(spec.mask, "mask", **_limits(spec))
        if (h, w) != (height, width):
            raise MaskError(f"mask {spec.mask!r} is {w}x{h} but the image is {width}x{height}")


def instruct(spec, *, files: dict | None = None, bundle=None, progress=None, before_load=None) -> Instructed:
    """Run an :class:`locedit.spec.InstructSpec` (``files``, ``bundle``, ``progress``, ``before_load`` as
    :func:`edit`)."""
    from .instruct import INSTRUCT_METHODS
    from .options import preset

    if spec.method not in INSTRUCT_METHODS:
        raise LoceditError(f"unknown method {spec.method!r}; choose one of {', '.join(INSTRUCT_METHODS)}")
    method = INSTRUCT_METHODS[spec.method]
    if not spec.instruction.strip():
        raise LoceditError("--instruction is empty")
    if spec.mask and "mask" not in method.uses:
        raise LoceditError(f"--mask is not used by --method {spec.method}")
    options = spec.options if spec.options is not None else preset(method.Options, spec.preset)
    check_vocabulary(bundle.name if bundle is not None else spec.model, {"instruction": spec.instruction})
    _check_instruct_files(spec, files)
    if bundle is None:  # the instruction's length on the tokenizer alone, before the model loads
        from .diffusion.textside import load_text_side

        text = load_text_side(spec.model)
        if text is not None:
            text.token_ids(spec.instruction)
    import torch.nn.functional as F  # the checks that need no pixel are done

    from . import __version__
    from .diffusion import load_model
    from .fileio import check_user_mask
    from .imaging import Fit
    from .options import describe

    reader = Files(files, _limits(spec))
    image = reader.image(spec.image)
    height, width = image.shape[-2:]
    mask = None
    if spec.mask:
        mask = reader.mask(spec.mask)
        check_user_mask(mask, spec.mask, height, width)
    if bundle is not None and spec.vae:
        raise LoceditError("--vae applies when the model is loaded; this session's model is loaded already")
    if before_load is not None:
        before_load()
    bundle = bundle or load_model(spec.model, spec.device, spec.dtype, vae=spec.vae)
    try:
        bundle.steps(spec.steps)
    except ValueError as exc:
        raise LoceditError(f"--steps {spec.steps}: {exc}") from None
    from .diffusion.flow_model import UNET_FAMILIES, check_family

    check_family(bundle, UNET_FAMILIES, f"--method {spec.method}")
    bundle.token_ids(spec.instruction)
    if bundle.unet.config.in_channels != 8:
        raise LoceditError(f"model {bundle.name!r} is not an InstructPix2Pix model (its UNet takes "
                           f"{bundle.unet.config.in_channels} channels, not 8)")
    fit = Fit.plan(height, width, bundle.image_size, spec.fit)
    calls = bundle.unet_calls
    res = method.run(bundle, fit.to_model(image), spec.instruction, spec.steps, options, spec.seed,
                     fit.to_model(mask, binary=True) if mask is not None else None, progress)
    edited = fit.from_model(bundle.decode_latents(res.latents).cpu())
    meta = {"command": spec.command(), "instruction": spec.instruction, "model": bundle.name, "method": spec.method,
            "preset": spec.preset, "options": describe(options), "steps": spec.steps, "seed": spec.seed,
            "fit": fit.mode, "dtype": spec.dtype, "input": os.path.basename(str(spec.image)),
            "locedit_version": __version__}
    if spec.vae:
        meta["vae"] = spec.vae
    if spec.mask:
        meta["mask"] = os.path.basename(spec.mask)
    roi = None
    if res.roi is not None:
        roi = fit.from_model(F.interpolate(res.roi.float()[None, None], size=(bundle.image_size,) * 2, mode="nearest"))
        roi = (roi > 0.5).float()
    stats = {"unet_calls": bundle.unet_calls - calls}
    if res.roi is not None:
        stats["roi_fraction"] = round(float(res.roi.float().mean()), 4)
    return Instructed(spec, edited, image, roi, meta, stats)


# ---- the flow editors (issue 33) ----------------------------------------------------------------------
@dataclass
class FlowEdited(_Saves):
    """A flow edit's result at the input's size: ``edited`` and ``source`` (1, 3, H, W) in [0, 1];
    ``mask`` (1, 1, H, W) the user's or the blend words' mask, if any; ``meta`` what the PNG records;
    ``model_calls`` the transformer calls."""

    spec: FlowSpec
    edited: torch.Tensor
    source: torch.Tensor
    mask: torch.Tensor | None
    meta: dict
    model_calls: int

    def panel(self) -> torch.Tensor:
        """(1, 3, H, 3W): source | edit | mask (or the edit's change, normalised, without one)."""
        import torch

        mask = self.mask
        if mask is None:
            diff = (self.edited - self.source).abs().amax(dim=1, keepdim=True)
            mask = diff / diff.max().clamp_min(1e-6)
        return torch.cat([self.source, self.edited, mask.expand(-1, 3, -1, -1)], dim=3)


def check_flow(spec: FlowSpec, files: dict | None = None):
    """Everything a flow spec's text and files show wrong, before torch is imported: the editor, its
    options' class, the prompts, mask or blend words as the editor needs them, the words in their
    prompts, the fit, the image's and the mask's headers (the mask's pixels by NumPy)."""
    import re

    from .flow import FLOW_EDITORS

    entry = FLOW_EDITORS.get(spec.method)
    if entry is None:
        raise LoceditError(f"unknown flow editor {spec.method!r}; choose from {', '.join(FLOW_EDITORS)}")
    if spec.options is not None and not isinstance(spec.options, entry.Options):
        raise LoceditError(f"--method {spec.method} takes {entry.Options.__name__}, not {type(spec.options).__name__}")
    if not spec.source.strip() or not spec.target.strip():
        raise LoceditError("--source and --target must not be empty")
    if spec.mask and spec.blend_words:
        raise LoceditError("give --mask or --blend-words, not both")
    if entry.needs_mask and not (spec.mask or spec.blend_words):
        raise LoceditError(f"--method {entry.name} needs --mask or --blend-words (the region to regenerate)")
    if spec.fit not in ("pad", "resize"):
        raise LoceditError(f"fit must be pad or resize, got {spec.fit!r}")
    check_vocabulary(spec.model, {"source": spec.source, "target": spec.target})
    for prompt, word, flag in zip((spec.source, spec.target), spec.blend_words or (), ("--source", "--target")):
        words, parts = re.findall(r"[\w'-]+", prompt.lower()), re.findall(r"[\w'-]+", word.lower())
        if not parts or not any(words[i:i + len(parts)] == parts for i in range(len(words) - len(parts) + 1)):
            raise LoceditError(f"--blend-words: {word!r} is not a word of {flag} {prompt!r}")
    memory = files or {}
    if spec.image in memory:
        return entry
    from .fileio import MaskError, header_size, mask_array

    limits = _limits(spec)
    height, width = header_size(spec.image, "image", **limits)
    if spec.mask and spec.mask not in memory:
        h, w = header_size(spec.mask, "mask", **limits)
        if (h, w) != (height, width):
            raise MaskError(f"mask {spec.mask!r} is {w}x{h} but the image is {width}x{height}")
        if not mask_array(spec.mask, **limits).any():
            raise MaskError(f"mask {spec.mask!r} is empty (no white pixel)")
    return entry


def flow_edit(spec: FlowSpec, *, files: dict | None = None, bundle=None, progress=None,
              before_load=None) -> FlowEdited:
    """Run a flow editor (:class:`~locedit.spec.FlowSpec`): the checks the inputs allow come before the
    model loads (``files``, ``bundle``, ``progress``, ``before_load`` as :func:`edit`'s). The image is
    fitted to the model's square and back; the mask taken to the latent grid by the editor's rule."""
    import dataclasses

    import torch
    import torch.nn.functional as F

    entry = check_flow(spec, files)
    options = spec.options if spec.options is not None else entry.Options()
    from .diffusion.flow_model import FlowBundle
    from .fileio import check_user_mask
    from .flow.editors import refuse_inert_guidance
    from .imaging import Fit

    inputs = Files(files, _limits(spec))
    image = inputs.image(spec.image)
    user_mask = inputs.mask(spec.mask) if spec.mask else None
    if user_mask is not None:
        check_user_mask(user_mask, spec.mask, *image.shape[-2:])
    if before_load is not None:
        before_load()
    if bundle is None:
        from .diffusion import load_model

        bundle = load_model(spec.model, spec.device, spec.dtype, vae=spec.vae, offload_text=spec.offload_text,
                            quantize=spec.quantize)
    if not isinstance(bundle, FlowBundle):
        raise LoceditError(f"{entry.name} runs on FLUX and SD3 models; {spec.model!r} is a {bundle.family} UNet model "
                           "(its editors are 'locedit edit --method ...')")
    if bundle.family not in entry.families:
        raise LoceditError(f"{entry.name} runs on {', '.join(entry.families)} models; {spec.model!r} is "
                           f"a {bundle.family} model")
    refuse_inert_guidance(options, entry.Options(), bundle)
    resolved = entry.resolve(options, bundle.family)
    fit = Fit.plan(image.shape[-2], image.shape[-1], bundle.image_size, spec.fit)
    calls = bundle.unet_calls
    with torch.no_grad():
        z = bundle.encode_image(fit.to_model(image))
        latent_mask = None
        if user_mask is not None:
            latent_mask = entry.latent_mask(fit.to_model(user_mask, binary=True), *z.shape[-2:])
        elif spec.blend_words:
            from .flow.maps import blend_words_mask

            latent_mask = blend_words_mask(bundle, z, [(spec.source, spec.blend_words[0]),
                                                       (spec.target, spec.blend_words[1])], seed=spec.seed)
        out = entry.run(bundle, z, spec.source, spec.target, resolved, spec.seed, progress, latent_mask)
        edited = fit.from_model(bundle.decode_latents(out).float().cpu())
    shown = user_mask
    if shown is None and latent_mask is not None:
        side = bundle.image_size
        shown = fit.from_model(F.interpolate(latent_mask.float().cpu(), size=(side, side), mode="nearest"))
    meta = {"method": entry.name, "model": spec.model, "source": spec.source, "target": spec.target,
            "options": dataclasses.asdict(resolved), "seed": spec.seed, "fit": fit.mode, "command": spec.command()}
    for key, value in (("mask", spec.mask), ("blend_words", list(spec.blend_words or []) or None),
                       ("quantize", spec.quantize)):
        if value is not None:
            meta[key] = value
    return FlowEdited(spec, edited, image, shown, meta, bundle.unet_calls - calls)


@dataclass
class FlowInversionResult:
    """A flow inversion's result (:func:`flow_invert`): ``inverted`` (its noise latent and settings),
    ``reconstruction`` (1, 3, H, W) in [0, 1] at the input's size, the noise sampled back down;
    ``psnr`` of it against the input and ``vae_psnr`` of the VAE's round trip alone (what an exact
    inversion would give back), both in dB; ``model_calls`` the inversion's and the reconstruction's."""

    inverted: object
    reconstruction: torch.Tensor
    psnr: float
    vae_psnr: float
    model_calls: tuple[int, int]
    meta: dict


def flow_invert(image: torch.Tensor, prompt: str, *, model: str, inversion: str = "euler", steps: int = 28,
                options=None, seed: int = 0, fit: str = "pad", device: str = "auto", dtype: str | None = None,
                vae: str | None = None, bundle=None, progress=None) -> FlowInversionResult:
    """Invert ``image`` (1, 3, H, W) in [0, 1] under ``prompt`` by a flow inversion
    (:data:`locedit.flow.inversions.FLOW_INVERSIONS`) on a FLUX or SD3 model, and sample it back;
    the image is fitted to the model's square (``fit``) and the reconstruction back to its size."""
    import dataclasses

    import torch

    from .diffusion.flow_model import FlowBundle
    from .flow.invert import check_inversion, invert, reconstruct
    from .flow.inversions import FLOW_INVERSIONS
    from .imaging import Fit
    from .metrics import psnr

    if inversion not in FLOW_INVERSIONS:
        raise LoceditError(f"unknown flow inversion {inversion!r}; choose from {', '.join(FLOW_INVERSIONS)}")
    if options is None:
        options = FLOW_INVERSIONS[inversion].Options()
    if not prompt.strip() and options.prompt == "source":
        raise LoceditError("--source is empty")
    if bundle is None:
        from .diffusion import load_model

        bundle = load_model(model, device, dtype or "fp32", vae=vae)
    if not isinstance(bundle, FlowBundle):
        raise LoceditError(f"--inversion {inversion} runs on FLUX and SD3 models; {model!r} is a {bundle.family} "
                           "UNet model (its inversions: --inversion ddim, null-text, ...)")
    _, options = check_inversion(bundle, inversion, options)
    plan = Fit.plan(image.shape[-2], image.shape[-1], bundle.image_size, fit)
    with torch.no_grad():
        z = bundle.encode_image(plan.to_model(image))
        round_trip = plan.from_model(bundle.decode_latents(z).float().cpu())
        inv = invert(bundle, z, prompt, inversion, steps, options, seed, progress)
        back, calls = reconstruct(bundle, inv, progress)
        out = plan.from_model(bundle.decode_latents(back).float().cpu())
    meta = {"inversion": inversion, "model": model, "prompt": prompt, "steps": steps, "seed": seed, "fit": plan.mode,
            "options": dataclasses.asdict(options)}
    return FlowInversionResult(inv, out, float(psnr(out, image)[0]), float(psnr(round_trip, image)[0]),
                               (inv.calls, calls), meta)
