"""Files at the edges: images, masks, boxes and region specs in, PNGs with metadata out.

The CLI, the bench (datasets) and the UI read and write files only through these functions; the
core takes and returns tensors: images (1, 3, H, W) float in [0, 1], masks (1, 1, H, W) in {0, 1}.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import LoceditError, MaskError


# limits on input images, checked before the pixels are decoded (configurable per command)
MAX_PIXELS = 40_000_000  # 40 megapixels
MAX_BYTES = 100 * 2**20  # 100 MiB
OUTPUT_TYPES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def _open_checked(path, what: str, error, max_pixels: int, max_bytes: int):
    """PIL image of ``path``, its header checked against the limits before any pixel is decoded."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise error(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if os.path.isdir(path):
        raise error(f"{what} {str(path)!r} is a folder, not an image")
    if size > max_bytes:
        raise error(f"{what} {str(path)!r} is {size / 2**20:.1f} MiB, over the limit of {max_bytes / 2**20:.0f} MiB "
                    "(--max-image-mb)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our limit, not PIL's
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{what} {str(path)!r} cannot be read: {first}") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise error(f"{what} {str(path)!r} is {w}x{h} ({w * h / 1e6:.0f} megapixels), over the limit of "
                    f"{max_pixels / 1e6:g} megapixels (--max-image-pixels)")
    return im


def _to_float(im):
    """(H, W, C) float32 in [0, 1] from any PIL mode: 16- and 32-bit grayscale are scaled from their
    own range (a 16-bit PNG is not clipped to white), palettes expanded, alpha dropped."""
    import numpy as np

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.float32) / 65535.0
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.repeat((arr / scale).clip(0, 1).astype(np.float32)[..., None], 3, axis=2)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        scale = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        return np.repeat((arr / scale).clip(0, 1)[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES):
    """PNG/JPEG/WebP/... -> (1, 3, H, W) float in [0, 1]; refuses files over the byte or pixel limit
    before decoding them."""
    im = _open_checked(path, "image", LoceditError, max_pixels, max_bytes)  # before torch loads: a bad file is quick
    import torch

    try:
        with im:
            arr = _to_float(im)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoceditError(f"image {str(path)!r} cannot be read: {first}") from None
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


MASK_RULES = ("half", "nonzero")


def load_mask(path: str | Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES, rule: str = "half"):
    """PNG -> (1, 1, H, W) binary float. ``rule`` "half": pixels brighter than half of the file's
    range are in (127 of 255 for 8-bit masks, 32767 of 65535 for 16-bit ones); "nonzero": every
    pixel that is not black, as MAG-Edit's and MDE-Edit's scripts read masks (``--mask-rule``)."""
    import numpy as np
    import torch

    return torch.from_numpy(mask_array(path, max_pixels, max_bytes, rule).astype(np.float32))[None, None]


def mask_array(path: str | Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES, rule: str = "half"):
    """:func:`load_mask`'s pixels as an (H, W) bool array (NumPy only: torch not needed)."""
    if rule not in MASK_RULES:
        raise MaskError(f"mask rule must be one of {', '.join(MASK_RULES)}, got {rule!r}")
    im = _open_checked(path, "mask", MaskError, max_pixels, max_bytes)
    try:
        with im:
            arr = _to_float(im).mean(axis=2)
    except (OSError, ValueError):
        raise MaskError(f"mask {str(path)!r} cannot be read as an image") from None
    return arr > 0 if rule == "nonzero" else arr > 127.5 / 255


def header_size(path: str | Path, what: str = "image", max_pixels: int = MAX_PIXELS,
                max_bytes: int = MAX_BYTES) -> tuple[int, int]:
    """(height, width) of an image file from its header, with the limits checked; nothing decoded."""
    im = _open_checked(path, what, MaskError if what == "mask" else LoceditError, max_pixels, max_bytes)
    with im:
        return im.size[1], im.size[0]


def box_mask(spec: str, height: int, width: int):
    """'x0,y0,x1,y1' in input pixels (exclusive ends) -> (1, 1, H, W) mask."""
    import torch

    x0, y0, x1, y1 = box_bounds(spec, height, width)
    m = torch.zeros(1, 1, height, width)
    m[..., y0:y1, x0:x1] = 1
    return m


def box_bounds(spec: str, height: int, width: int) -> tuple[int, int, int, int]:
    """'x0,y0,x1,y1' -> the four ints, refused when malformed, empty or outside the image."""
    try:
        x0, y0, x1, y1 = (int(float(v)) for v in spec.split(","))
    except ValueError:
        raise MaskError(f"box {spec!r} is not four numbers x0,y0,x1,y1") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise MaskError(f"box {spec!r} is empty or outside the {width}x{height} image")
    return x0, y0, x1, y1


def check_user_mask(m, name: str, height: int, width: int) -> None:
    if tuple(m.shape[-2:]) != (height, width):
        raise MaskError(f"mask {name!r} is {m.shape[-1]}x{m.shape[-2]} but the image is {width}x{height}")
    if not bool(m.any()):
        raise MaskError(f"mask {name!r} is empty (no white pixel)")


def looks_like_box(where: str) -> bool:
    """A region's box (numbers separated by commas: ``x0,y0,x1,y1``; another count is a malformed box,
    refused by :func:`box_bounds`) rather than a mask file's name."""
    parts = where.split(",")
    return len(parts) > 1 and all(p.strip().lstrip("-").replace(".", "").isdigit() for p in parts)


def region_spec(spec: str, height: int, width: int, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES,
                rule: str = "half"):
    """'WORD=mask.png' or 'WORD=x0,y0,x1,y1' -> (word, (1, 1, H, W) mask)."""
    word, sep, where = spec.partition("=")
    if not sep or not word.strip() or not where:
        raise MaskError(f"region {spec!r} is not WORD=MASK.png or WORD=x0,y0,x1,y1")
    m = box_mask(where, height, width) if looks_like_box(where) else load_mask(where, max_pixels, max_bytes, rule)
    check_user_mask(m, where, height, width)
    return word.strip(), m


def check_output(path: str | Path, what: str = "--out", types=OUTPUT_TYPES) -> Path:
    """Refuse an output path before any work: an existing folder, an unsupported file type, or a
    destination folder that cannot be created or written."""
    out = Path(path)
    if out.is_dir():
        raise LoceditError(f"{what} {str(out)!r} is a folder; give a file name")
    if out.suffix.lower() not in types:
        raise LoceditError(f"{what} {str(out)!r}: unsupported file type {out.suffix or '(none)'!r}; "
                           f"use {', '.join(sorted(types))}")
    parent = out.parent if str(out.parent) else Path(".")
    probe = parent
    while not probe.exists():
        if probe.is_symlink():  # a link to nowhere: mkdir would fail after the whole run
            raise LoceditError(f"{what} {str(out)!r}: {str(probe)!r} is a broken symbolic link")
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise LoceditError(f"{what} {str(out)!r}: the folder {str(probe)!r} is not writable")
    if out.exists() and not os.access(out, os.W_OK):
        raise LoceditError(f"{what} {str(out)!r} exists and is not writable")
    return out


def check_output_dir(path: str | Path, what: str = "--out-dir") -> Path:
    """Refuse an output folder before any work: a file, a broken link, or a folder that cannot be
    made or written (its parent is made, as the write would)."""
    out = Path(path)
    if out.is_symlink() and not out.exists():
        raise LoceditError(f"{what} {str(out)!r} is a broken symbolic link")
    if out.exists() and not out.is_dir():
        raise LoceditError(f"{what} {str(out)!r} is a file; give a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoceditError(f"{what} {str(out)!r}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK | os.X_OK) or (out.is_dir() and not os.access(out, os.W_OK | os.X_OK)):
        raise LoceditError(f"{what} {str(out)!r} is not writable")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _encode(image, out: Path, metadata: dict, tmp: str) -> None:
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    arr = (image[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    fmt = OUTPUT_TYPES.get(out.suffix.lower(), "PNG")
    im = Image.fromarray(arr)
    if fmt == "PNG":
        info = PngInfo()
        for k, v in metadata.items():
            if v is not None:  # an unset value (no --preset) is no chunk, not the text "null"
                info.add_text(f"locedit:{k}", v if isinstance(v, str) else json.dumps(v))
        im.save(tmp, format="PNG", pnginfo=info)
    else:  # JPEG and WebP carry the metadata as one JSON object in the EXIF image description
        exif = Image.Exif()
        exif[0x010E] = json.dumps({"locedit": metadata})
        im.save(tmp, format=fmt, quality=95, exif=exif.tobytes())


class OutputSet:
    """All-or-nothing outputs of one command: every file is written to a temporary name in its own
    folder (the same filesystem), then all are renamed; if any write fails, none is left behind.
    Files get the permissions of a plain ``open``: 0666 less the umask."""

    def __init__(self):
        self.items: list[tuple[Path, object, dict]] = []

    def add(self, image, path: str | Path, metadata: dict) -> None:
        self.items.append((Path(path), image, metadata))

    def commit(self) -> None:
        temps: list[tuple[str, Path]] = []
        mode = 0o666 & ~_umask()
        try:
            for out, image, metadata in self.items:
                out.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".locedit-", suffix=out.suffix or ".png", dir=out.parent)
                os.close(fd)
                temps.append((tmp, out))
                _encode(image, out, metadata, tmp)
                os.chmod(tmp, mode)
            for tmp, out in temps:
                os.replace(tmp, out)
            temps = []
        except OSError as exc:
            raise LoceditError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
        finally:
            for tmp, _ in temps:
                if os.path.exists(tmp):
                    os.remove(tmp)


def save_png(image, path: str | Path, metadata: dict) -> None:
    """(1, 3, H, W) in [0, 1] -> one image file (PNG with ``metadata`` as ``locedit:KEY`` text chunks;
    JPEG/WebP by extension), written atomically."""
    out = OutputSet()
    out.add(image, path, metadata)
    out.commit()
