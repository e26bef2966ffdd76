"""``locedit ui``: the Gradio web app (an edge, like the CLI: files, PIL and widgets live here).

Every edit the page asks for is turned into a ``locedit edit`` command line, parsed by the CLI's own
parser and run by the CLI's own ``edit`` command (:func:`locedit.cli.edit.cmd_edit`), with three
things handed over beside the parsed arguments: the model loaded once at start, the session's
inversion cache (so changing only the target, the method or its options re-runs only the edit) and
the page's progress display. The command line shown under the result is that one, with the
server's temporary file names replaced by placeholders: it reproduces the edit.

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
        cls = METHODS[name].Options if name in METHODS else INSTRUCT_METHODS[name].Options
    else:
        cls = INVERSIONS[name].Options
    return list(flag_fields(cls))


def method_names(config: AppConfig) -> list[str]:
    """The editing methods, then the instruction methods when an instruct model is configured."""
    from ..instruct import INSTRUCT_METHODS
    from ..methods import METHODS

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
        h, w = a.shape[:2]
        if h * w > self.config.max_pixels:
            raise LoceditError(f"the image is {w}x{h} = {h * w} pixels, over this server's limit of "
                               f"{self.config.max_pixels} (locedit ui --max-image-pixels)")
        return a[..., :3]

    def command(self, inputs: EditInputs, files: dict[str, str]) -> list[str]:
        """The ``locedit edit`` (or, for ip2p and lime, ``locedit instruct``) argv for ``inputs``;
        ``files`` maps placeholder names to the server's temporary files (the image, masks, outputs)."""
        from ..instruct import INSTRUCT_METHODS
        from ..methods import METHODS

        if inputs.method in INSTRUCT_METHODS:
            return self.instruct_command(inputs, files)
        m = METHODS[inputs.method]
        argv = ["edit", "IMAGE.png", "--source", inputs.source, "--target", inputs.target,
                "--model", self.config.model, "--method", inputs.method]
        takes = _takes_inversion(m, inputs)
        fields = [("method", inputs.method)] + ([("inversion", inputs.inversion)] if takes else [])
        argv += ["--steps", str(int(inputs.steps)), "--guidance", repr(float(inputs.guidance)),
                 "--seed", str(int(inputs.seed))]
        if inputs.preset in ("paper", "official"):
            argv += ["--preset", inputs.preset]
        argv += self._option_flags(fields, inputs.options)
        layers = [k for k in files if k.startswith("MASK")]
        regions = inputs.region_words.replace(",", " ").split()
        attributes = inputs.attribute_words.replace(",", " ").split()
        if layers and ("regions" in m.uses or "source_regions" in m.uses) and regions:
            for word, layer in zip(regions, layers):
                argv += ["--region", f"{word}={layer}"]
            for word, layer in zip(attributes, layers):
                argv += ["--attribute", f"{word}={layer}"]
        elif layers:
            for layer in layers:
                argv += ["--mask", layer]
        for b in inputs.boxes.split():
            argv += ["--box", b]
        if inputs.blend_words.strip():
            argv += ["--blend-words", *inputs.blend_words.split()]
        if inputs.attention_words.strip():
            argv += ["--save-attention", "ATTENTION.png", "--attention-words", *inputs.attention_words.split()]
        argv += ["--panel", "PANEL.png", "--out", "EDIT.png"]
        if takes:
            i = argv.index("--method") + 2
            argv[i:i] = ["--inversion", inputs.inversion]
        return argv

    def instruct(self):
        """The instruct model, loaded on first use (an InstructPix2Pix UNet: 8 input channels)."""
        from ..diffusion import load_model

        if self.instruct_bundle is None:
            self.instruct_bundle = load_model(self.config.instruct_model, self.config.device, self.config.dtype)
        return self.instruct_bundle

    def instruct_command(self, inputs: EditInputs, files: dict[str, str]) -> list[str]:
        from ..errors import LoceditError

        if not self.config.instruct_model:
            raise LoceditError("this server has no instruct model (locedit ui --instruct-model NAME)")
        argv = ["instruct", "IMAGE.png", "--instruction", inputs.instruction, "--model", self.config.instruct_model,
                "--method", inputs.method, "--steps", str(int(inputs.steps)), "--seed", str(int(inputs.seed))]
        if inputs.preset in ("paper", "official"):
            argv += ["--preset", inputs.preset]
        argv += self._option_flags([("method", inputs.method)], inputs.options)
        layers = [k for k in files if k.startswith("MASK")]
        if len(layers) > 1:
            raise LoceditError("the instruction methods take one mask: draw on one layer")
        if layers:
            argv += ["--mask", layers[0]]
        for flag, value in (("boxes", inputs.boxes), ("region words", inputs.region_words),
                            ("blend words", inputs.blend_words), ("attention words", inputs.attention_words)):
            if value.strip():
                raise LoceditError(f"{flag} are not used by --method {inputs.method}")
        return argv + ["--panel", "PANEL.png", "--out", "EDIT.png"]

    @staticmethod
    def _option_flags(fields, options: dict) -> list[str]:
        argv, seen = [], set()
        for kind, name in fields:
            for f in option_fields(kind, name):
                text = str(options.get(f.flag, "") or "").strip()
                if not text or f.flag in seen:
                    continue
                seen.add(f.flag)
                if isinstance(f.default, bool):
                    argv.append(f"--{f.flag}" if text in ("on", "true", "yes") else f"--no-{f.flag}")
                elif f.meta.get("repeat"):
                    for v in text.split():
                        argv += [f"--{f.flag}", v]
                else:
                    argv += [f"--{f.flag}", text]
        return argv

    def edit(self, inputs: EditInputs, cache: dict | None = None, progress=None) -> EditOutput:
        """Run one edit through the CLI's parser and ``edit`` command (see the module docstring);
        ``cache``: the browser session's inversion cache (kept by the caller between edits)."""
        from PIL import Image

        from ..cli import build_parser
        from ..errors import LoceditError
        from ..fileio import load_image

        from ..instruct import INSTRUCT_METHODS

        image = self.check_image(inputs.image)
        instruct = inputs.method in INSTRUCT_METHODS
        if instruct and not inputs.instruction.strip():
            raise LoceditError(f"--method {inputs.method} edits by an instruction: write one (e.g. 'make the circle green')")
        if not instruct and (not inputs.source.strip() or not inputs.target.strip()):
            raise LoceditError("give both prompts: the source describes the image, the target the edit")
        with tempfile.TemporaryDirectory(prefix="locedit-ui-") as tmp:
            files = {"IMAGE.png": os.path.join(tmp, "image.png")}
            Image.fromarray(image).save(files["IMAGE.png"])
            for k, m in enumerate(inputs.masks, start=1):
                if m.shape != image.shape[:2]:
                    raise LoceditError("a mask layer does not match the image's size")
                files[f"MASK{k}.png"] = os.path.join(tmp, f"mask{k}.png")
                Image.fromarray(m.astype(np.uint8) * 255).save(files[f"MASK{k}.png"])
            for name in ("PANEL.png", "EDIT.png", "ATTENTION.png"):
                files[name] = os.path.join(tmp, name.lower())
            argv = self.command(inputs, files)
            real = [files.get(a, a) if not a.startswith(("--", "-")) else a for a in argv]
            real = [_substitute(a, files) for a in real]
            args = parse_edit_args(build_parser(), real)
            args.bundle, args.cache = (self.instruct(), None) if instruct else (self.bundle, cache)
            args.progress_fn, args.quiet, args.json = progress, True, False
            with self.lock:
                summary = args.run(args)  # cmd_edit or cmd_instruct
            panel = np.asarray(Image.open(files["PANEL.png"]).convert("RGB"))
            edited = np.asarray(Image.open(files["EDIT.png"]).convert("RGB"))
            attention = (np.asarray(Image.open(files["ATTENTION.png"]).convert("RGB"))
                         if os.path.exists(files["ATTENTION.png"]) else None)
            keep = tempfile.NamedTemporaryFile(prefix="locedit-edit-", suffix=".png", delete=False)
            keep.close()
            os.replace(files["EDIT.png"], keep.name)  # the download: PNG with locedit's metadata
            load_image(keep.name)  # written by the CLI's own writer; read back as a check
            self.downloads.append(keep.name)
            while len(self.downloads) > self.KEEP:
                with contextlib.suppress(OSError):
                    os.unlink(self.downloads.pop(0))
        return EditOutput(panel, edited, attention, "locedit " + shlex.join(argv), keep.name, summary)


def _takes_inversion(method, inputs: EditInputs) -> bool:
    """Whether the method runs on an inversion with the page's option values (Blended Latent
    Diffusion decides by its noise option), so the command gets --inversion exactly when the CLI
    uses it; values the CLI would refuse are left for its parser to report."""
    from ..options import flag_fields, preset, replace_path

    options = preset(method.Options, inputs.preset if inputs.preset in ("paper", "official") else None)
    for f in flag_fields(method.Options):
        text = str(inputs.options.get(f.flag, "") or "").strip()
        if text and not isinstance(f.default, bool) and not f.meta.get("repeat"):
            try:
                options = replace_path(options, {f.path: f.meta.get("type", str)(text)})
            except Exception:  # noqa: BLE001 - the CLI's parser gives the one-line error
                return "inversion" in method.uses
    return method.takes_inversion(options)


def _substitute(arg: str, files: dict[str, str]) -> str:
    """WORD=MASK1.png -> WORD=/tmp/.../mask1.png (region specs)."""
    if "=" in arg:
        word, _, value = arg.partition("=")
        if value in files:
            return f"{word}={files[value]}"
    return files.get(arg, arg)


def parse_edit_args(parser, argv: list[str]):
    """Parse with the CLI's parser; a usage error becomes a one-line LoceditError (no exit)."""
    import contextlib
    import io

    from ..errors import LoceditError

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        msg = lines[-1] if lines else "invalid options"
        raise LoceditError(msg.split("error: ", 1)[-1]) from None


def comparison_grid(images: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Side-by-side tiles with their labels drawn above them."""
    from PIL import Image, ImageDraw

    h = max(a.shape[0] for _, a in images)
    scale = max(1, 256 // h)
    tiles = []
    for label, a in images:
        im = Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST)
        tile = Image.new("RGB", (im.width, im.height + 16), "white")
        tile.paste(im, (0, 16))
        ImageDraw.Draw(tile).text((2, 2), label, fill="black")
        tiles.append(tile)
    grid = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), "white")
    x = 0
    for t in tiles:
        grid.paste(t, (x, 0))
        x += t.width
    return np.asarray(grid)
