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


def load_image(path: str | Path):
    """PNG/JPEG -> (1, 3, H, W) float in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise LoceditError(f"image {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoceditError(f"image {str(path)!r} cannot be read: {first}") from None
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def load_mask(path: str | Path):
    """PNG -> (1, 1, H, W) binary float (pixels > 127 of the grayscale image are in)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise MaskError(f"mask {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError):
        raise MaskError(f"mask {str(path)!r} cannot be read as an image") from None
    return torch.from_numpy((arr > 127).astype(np.float32))[None, None]


def box_mask(spec: str, height: int, width: int):
    """'x0,y0,x1,y1' in input pixels (exclusive ends) -> (1, 1, H, W) mask."""
    import torch

    try:
        x0, y0, x1, y1 = (int(float(v)) for v in spec.split(","))
    except ValueError:
        raise MaskError(f"box {spec!r} is not X0,Y0,X1,Y1") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise MaskError(f"box {spec!r} is empty or outside the {width}x{height} image")
    m = torch.zeros(1, 1, height, width)
    m[..., y0:y1, x0:x1] = 1
    return m


def check_user_mask(m, name: str, height: int, width: int) -> None:
    if tuple(m.shape[-2:]) != (height, width):
        raise MaskError(f"mask {name!r} is {m.shape[-1]}x{m.shape[-2]} but the image is {width}x{height}")
    if not bool(m.any()):
        raise MaskError(f"mask {name!r} is empty (no white pixel)")


def region_spec(spec: str, height: int, width: int):
    """'WORD=mask.png' or 'WORD=x0,y0,x1,y1' -> (word, (1, 1, H, W) mask)."""
    word, sep, where = spec.partition("=")
    if not sep or not word.strip() or not where:
        raise MaskError(f"region {spec!r} is not WORD=MASK.png or WORD=x0,y0,x1,y1")
    parts = where.split(",")
    looks_like_box = len(parts) == 4 and all(p.strip().lstrip("-").replace(".", "").isdigit() for p in parts)
    m = box_mask(where, height, width) if looks_like_box else load_mask(where)
    check_user_mask(m, where, height, width)
    return word.strip(), m


def save_png(image, path: str | Path, metadata: dict) -> None:
    """(1, 3, H, W) in [0, 1] -> PNG with ``metadata`` as ``locedit:KEY`` text chunks; atomic
    (temporary file in the destination folder, then rename)."""
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    arr = (image[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    info = PngInfo()
    for k, v in metadata.items():
        info.add_text(f"locedit:{k}", v if isinstance(v, str) else json.dumps(v))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".locedit-", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        Image.fromarray(arr).save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
