"""``locedit ui``: the Gradio web app (an edge, like the CLI: files, PIL and widgets live here).

Every edit the page asks for becomes an :class:`~locedit.spec.EditSpec` (or an
:class:`~locedit.spec.InstructSpec`) that the library runs (:func:`locedit.api.edit`), with the image
and the mask layers in memory under the names the spec gives ("IMAGE.png", "MASK1.png", ...), the
model loaded once at start, the session's inversion cache (so changing only the target, the method
or its options re-runs only the edit) and the page's progress display. The command line shown under
the result is ``spec.command()``: with the image saved as IMAGE.png (and the layers as MASK1.png,
...) it reproduces the edit.

Safety: uploads arrive as pixel arrays (Gradio writes them to its own cache; no path from the page
reaches the filesystem), over ``max_pixels`` or ``max_bytes`` they are refused with a message,
one edit runs at a time per process (Gradio's queue, concurrency 1, and a lock), and a failed
edit shows its one-line error and leaves the session as it was.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).with_name("example.png")
EXAMPLE_SOURCE = "a red circle and a blue striped square on a gray background"
EXAMPLE_TARGET = "a green circle and a blue striped square on a gray background"
PRESETS = ("default", "paper", "official")


@dataclass
class AppConfig:
    model: str = "shapes"
    instruct_model: str | None = "shapes-instruct"  # for ip2p and lime (loaded on first use); None: not offered
    device: str = "auto"
    dtype: str = "fp32"
    max_pixels: int = 4096 * 4096
    max_bytes: int = 50 * 1024 * 1024
    max_queue: int = 16  # requests waiting for the model; more are refused as busy


@dataclass
class EditInputs:
    """What the page sends for one edit (image as an RGB uint8 array, masks as bool arrays)."""

    image: np.ndarray
    source: str
    target: str
    method: str = "p2p"
    inversion: str = "direct"
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0
    preset: str = "default"
    instruction: str = ""  # for the instruction methods (ip2p, lime), which take no prompts
    masks: list = field(default_factory=list)  # one bool (H, W) array per drawn layer
    region_words: str = ""  # one word per mask layer, for methods that tie words to masks
    attribute_words: str = ""  # MDE-Edit's attribute words, one per layer
    boxes: str = ""  # "x0,y0,x1,y1 x0,y0,x1,y1"
    blend_words: str = ""  # "SRC TGT" (P2P local blend)
    options: dict = field(default_factory=dict)  # flag -> text (blank: the default)
    attention_words: str = ""  # target words whose attention maps to show


@dataclass
class EditOutput:
    panel: np.ndarray  # source | edit | mask
    edited: np.ndarray
    attention: np.ndarray | None
    command: str
    png: str  # the edited image with locedit's metadata, for download
    summary: dict


def option_fields(kind: str, name: str):
    """The flags of a method's (kind "method": an editing or an instruction method) or an
    inversion's ("inversion") options class."""
    from ..instruct import INSTRUCT_METHODS
    from ..inversion import INVERSIONS
    from ..methods import METHODS
    from ..options import flag_fields

    if kind == "method":
        from ..flow import FLOW_EDITORS

        registry = METHODS if name in METHODS else FLOW_EDITORS if name in FLOW_EDITORS else INSTRUCT_METHODS
        cls = registry[name].Options
    else:
        cls = INVERSIONS[name].Options
    return list(flag_fields(cls))


def method_names(config: AppConfig, bundle=None) -> list[str]:
    """The editing methods, then the instruction methods when an instruct model is configured; on a
    flow model (FLUX, SD3) the flow editors that run on its family instead."""
    from ..instruct import INSTRUCT_METHODS
    from ..methods import METHODS

    family = getattr(bundle, "family", "sd")
    if family in ("flux", "sd3"):
        from ..flow import FLOW_EDITORS

        return [name for name, e in FLOW_EDITORS.items() if family in e.families]
    return list(METHODS) + (list(INSTRUCT_METHODS) if config.instruct_model else [])


def layer_masks(editor_value, size: tuple[int, int]) -> list[np.ndarray]:
    """Bool masks (H, W) of the image size from an ImageEditor value's drawn layers (a pixel is in
    where the layer is not transparent); empty layers are dropped."""
    from PIL import Image

    out = []
    for layer in (editor_value or {}).get("layers") or []:
        if layer is None:
            continue
        a = np.asarray(layer)
        alpha = a[..., 3] if a.ndim == 3 and a.shape[2] == 4 else (a.max(axis=-1) if a.ndim == 3 else a)
        m = alpha > 0
        if m.shape != size:
            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)) > 127
        if m.any():
            out.append(m)
    return out


class Session:
    """The model and what one browser session keeps between edits."""

    def __init__(self, config: AppConfig, bundle):
        self.config = config
        self.bundle = bundle
        self.instruct_bundle = None  # loaded on the first instruction edit
        self.lock = threading.Lock()
        self.downloads: list[str] = []  # the last KEEP downloadable PNGs; older ones are deleted

    KEEP = 32

    def check_image(self, image: np.ndarray | None) -> np.ndarray:
        from ..errors import LoceditError

        if image is None:
            raise LoceditError("no image: upload one, or load the example")
        a = np.asarray(image)
        if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
            raise LoceditError("the upload is not an RGB image")
        self.check_size(*a.shape[:2])
        return a[..., :3]

    def check_size(self, h: int, w: int) -> None:
        from ..errors import LoceditError

        if h * w > self.config.max_pixels:
            raise LoceditError(f"the image is {w}x{h} = {h * w} pixels, over this server's limit of "
                               f"{self.config.max_pixels} (locedit ui --max-image-pixels)")

    def spec(self, inputs: EditInputs, files: dict):
        """The :class:`~locedit.spec.EditSpec` (or, for ip2p and lime, the
        :class:`~locedit.spec.InstructSpec`) of ``inputs``; ``files`` holds the image as "IMAGE.png" and
        the mask layers as "MASK1.png", "MASK2.png", ... in memory."""
        from ..errors import LoceditError
        from ..instruct import INSTRUCT_METHODS
        from ..inversion import INVERSIONS
        from ..methods import METHODS
        from ..options import options_from_texts
        from ..spec import EditSpec

        preset = inputs.preset if inputs.preset in ("paper", "official") else None
        if inputs.method in INSTRUCT_METHODS:
            return self.instruct_spec(inputs, files, preset)
        from ..flow import FLOW_EDITORS

        if inputs.method in FLOW_EDITORS:
            return self.flow_spec(inputs, files)
        m = METHODS[inputs.method]
        options = options_from_texts(m.Options, preset, _texts("method", inputs.method, inputs.options))
        takes = m.takes_inversion(options)  # Blended Latent Diffusion decides by its noise option
        inversion_options = (options_from_texts(INVERSIONS[inputs.inversion].Options, preset,
                                                _texts("inversion", inputs.inversion, inputs.options)) if takes else None)
        layers = [k for k in files if k.startswith("MASK")]
        words = inputs.region_words.replace(",", " ").split()
        attributes = inputs.attribute_words.replace(",", " ").split()
        by_word = bool(layers and ("regions" in m.uses or "source_regions" in m.uses) and words)
        blend = inputs.blend_words.split()
        if blend and len(blend) != 2:
            raise LoceditError("blend words: give two, SOURCE_WORD TARGET_WORD")
        return EditSpec(
            target=inputs.target, image="IMAGE.png", source=inputs.source, method=inputs.method, options=options,
            inversion=inputs.inversion if takes else None, inversion_options=inversion_options, preset=preset,
            masks=() if by_word else tuple(layers), boxes=tuple(inputs.boxes.split()),
            blend_words=tuple(blend) or None,
            regions=tuple(f"{w}={layer}" for w, layer in zip(words, layers)) if by_word else (),
            attributes=tuple(f"{w}={layer}" for w, layer in zip(attributes, layers)) if by_word else (),
            model=self.config.model, device=self.config.device, dtype=self.config.dtype, steps=int(inputs.steps),
            guidance=float(inputs.guidance), seed=int(inputs.seed),
            attention_words=tuple(inputs.attention_words.split()) or None)

    def flow_spec(self, inputs: EditInputs, files: dict):
        """The :class:`~locedit.spec.FlowSpec` of ``inputs`` for a flow editor: its options from the
        page, the mask layers' union as the mask (written as "MASK.png"), the blend words; the page's
        inversion, steps, guidance and preset are the UNet methods' (each editor has its own steps)."""
        from ..errors import LoceditError
        from ..flow import FLOW_EDITORS
        from ..options import options_from_texts
        from ..spec import FlowSpec

        for flag, value in (("boxes", inputs.boxes), ("region words", inputs.region_words),
                            ("attribute words", inputs.attribute_words), ("attention words", inputs.attention_words)):
            if value.strip():
                raise LoceditError(f"{flag} are not used by --method {inputs.method}")
        blend = inputs.blend_words.split()
        if blend and len(blend) != 2:
            raise LoceditError("blend words: give two, SOURCE_WORD TARGET_WORD")
        layers = [k for k in files if k.startswith("MASK")]
        if layers:
            files["MASK.png"] = np.logical_or.reduce([np.asarray(files.pop(k)) for k in layers])
        options = options_from_texts(FLOW_EDITORS[inputs.method].Options, None,
                                     _texts("method", inputs.method, inputs.options))
        return FlowSpec("IMAGE.png", inputs.source, inputs.target, self.config.model, method=inputs.method,
                        options=options, mask="MASK.png" if layers else None, blend_words=tuple(blend) or None,
                        device=self.config.device, dtype=self.config.dtype, seed=int(inputs.seed))

    def command(self, inputs: EditInputs, files: dict) -> list[str]:
        """The command-line words of :meth:`spec` (``edit IMAGE.png ...`` or ``instruct IMAGE.png ...``)."""
        spec = self.spec(inputs, files)
        return shlex.split(spec.command())[1:]

    def instruct(self):
        """The instruct model, loaded on first use (an InstructPix2Pix UNet: 8 input channels)."""
        from ..diffusion import load_model

        if self.instruct_bundle is None:
            self.instruct_bundle = load_model(self.config.instruct_model, self.config.device, self.config.dtype)
        return self.instruct_bundle

    def instruct_spec(self, inputs: EditInputs, files: dict, preset):
        from ..errors import LoceditError
        from ..instruct import INSTRUCT_METHODS
        from ..options import options_from_texts
        from ..spec import InstructSpec

        if not self.config.instruct_model:
            raise LoceditError("this server has no instruct model (locedit ui --instruct-model NAME)")
        layers = [k for k in files if k.startswith("MASK")]
        if len(layers) > 1:
            raise LoceditError("the instruction methods take one mask: draw on one layer")
        for flag, value in (("boxes", inputs.boxes), ("region words", inputs.region_words),
                            ("blend words", inputs.blend_words), ("attention words", inputs.attention_words)):
            if value.strip():
                raise LoceditError(f"{flag} are not used by --method {inputs.method}")
        options = options_from_texts(INSTRUCT_METHODS[inputs.method].Options, preset,
                                     _texts("method", inputs.method, inputs.options))
        return InstructSpec(inputs.instruction, "IMAGE.png", inputs.method, options, preset,
                            layers[0] if layers else None, self.config.instruct_model, device=self.config.device,
                            dtype=self.config.dtype, steps=int(inputs.steps), seed=int(inputs.seed))

    def edit(self, inputs: EditInputs, cache: dict | None = None, progress=None) -> EditOutput:
        """Run one edit through the library (:func:`locedit.api.edit` or :func:`locedit.api.instruct`)
        with the image and mask layers in memory; ``cache``: the browser session's inversion cache
        (kept by the caller between edits)."""
        from .. import api
        from ..errors import LoceditError
        from ..instruct import INSTRUCT_METHODS

        image = self.check_image(inputs.image)
        instruct = inputs.method in INSTRUCT_METHODS
        if instruct and not inputs.instruction.strip():
            raise LoceditError(f"--method {inputs.method} edits by an instruction: write one (e.g. 'make the circle green')")
        if not instruct and (not inputs.source.strip() or not inputs.target.strip()):
            raise LoceditError("give both prompts: the source describes the image, the target the edit")
        files = {"IMAGE.png": image}
        for k, m in enumerate(inputs.masks, start=1):
            if m.shape != image.shape[:2]:
                raise LoceditError("a mask layer does not match the image's size")
            files[f"MASK{k}.png"] = m
        spec = self.spec(inputs, files)
        from ..spec import FlowSpec

        if isinstance(spec, FlowSpec):
            import time

            t0 = time.perf_counter()
            with self.lock:
                result = api.flow_edit(spec, files=files, bundle=self.bundle, progress=progress)
            return EditOutput(_uint8(result.panel()), _uint8(result.edited), None, spec.command(),
                              self.download(result), {**result.meta, "model_calls": result.model_calls,
                                                      "edit_seconds": time.perf_counter() - t0})
        with self.lock:
            if instruct:
                result = api.instruct(spec, files=files, bundle=self.instruct(), progress=progress)
            else:
                result = api.edit(spec, files=files, bundle=self.bundle, cache=cache, progress=progress)
        attention = (_uint8(result.attention_grid()) if not instruct and spec.attention_words is not None
                     and result.attention else None)
        summary = {**result.meta, **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.stats.items()
                                     if k != "guidance_loss"}}
        return EditOutput(_uint8(result.panel()), _uint8(result.edited), attention, spec.command(),
                          self.download(result), summary)

    def download(self, result) -> str:
        """The edit as a PNG with locedit's metadata, for the page's download link (the last KEEP kept)."""
        from ..fileio import OutputSet, load_image

        keep = tempfile.NamedTemporaryFile(prefix="locedit-edit-", suffix=".png", delete=False)
        keep.close()
        outputs = OutputSet()
        outputs.add(result.edited, keep.name, result.meta)
        outputs.commit()
        load_image(keep.name)  # read back as a check
        self.downloads.append(keep.name)
        while len(self.downloads) > self.KEEP:
            with contextlib.suppress(OSError):
                os.unlink(self.downloads.pop(0))
        return keep.name


def _texts(kind: str, name: str, options: dict) -> dict[str, str]:
    """The page's option texts that belong to one options class."""
    return {f.flag: str(options[f.flag]) for f in option_fields(kind, name) if f.flag in options}


def _uint8(x) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, as the PNG writer rounds."""
    return (x[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


LABEL_PX = 18  # the comparison grid's label size


def comparison_grid(images: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Side-by-side tiles with their labels drawn above them."""
    from PIL import Image, ImageDraw

    from PIL import ImageFont

    h = max(a.shape[0] for _, a in images)
    scale = max(1, 256 // h)
    font = ImageFont.load_default(size=LABEL_PX)  # the bitmap default is 8 px: unreadable on a page
    band = LABEL_PX + 10
    tiles = []
    for label, a in images:
        im = Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST)
        tile = Image.new("RGB", (im.width, im.height + band), "white")
        tile.paste(im, (0, band))
        ImageDraw.Draw(tile).text((4, 4), label, fill="black", font=font)
        tiles.append(tile)
    grid = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), "white")
    x = 0
    for t in tiles:
        grid.paste(t, (x, 0))
        x += t.width
    return np.asarray(grid)
