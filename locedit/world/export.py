"""Write shapes-world scenes and edit sets to disk (the data behind ``locedit world``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from .edits import EDIT_KINDS, sample_edit
from .scene import render, sample_scene


def _png(path: Path, array: np.ndarray) -> str:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path)
    return path.name


def write_scenes(out: str | Path, n: int, seed: int = 0, size: int = 64, progress=None) -> Path:
    """``n`` scenes: scene_K.png, scene_K_objJ.png masks, and scenes.jsonl (caption, objects, boxes)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    items = range(n) if progress is None else progress(range(n), "scenes")
    for k in items:
        scene = sample_scene(rng)
        img, masks = render(scene, size)
        row = {"id": k, "image": _png(out / f"scene_{k:05d}.png", img), "caption": scene.caption(),
               "background": scene.background, "objects": []}
        for j, (obj, m) in enumerate(zip(scene.objects, masks)):
            ys, xs = np.nonzero(m)
            box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None
            row["objects"].append({"shape": obj.shape, "colour": obj.colour, "texture": obj.texture, "box": box,
                                   "mask": _png(out / f"scene_{k:05d}_obj{j}.png", m)})
        rows.append(row)
    (out / "scenes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def write_edits(out: str | Path, n: int, seed: int = 0, size: int = 64, kinds: tuple[str, ...] = EDIT_KINDS,
                progress=None) -> Path:
    """``n`` edits: K_source.png, K_target.png, K_mask.png and edits.jsonl (captions, instruction,
    edited-object masks and boxes, blend words)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    items = range(n) if progress is None else progress(range(n), "edits")
    for k in items:
        e = sample_edit(rng, rng.choice(list(kinds)))
        row = {
            "id": k, "kind": e.kind,
            "source_image": _png(out / f"{k:05d}_source.png", e.render_source(size)),
            "target_image": _png(out / f"{k:05d}_target.png", e.render_target(size)),
            "mask": _png(out / f"{k:05d}_mask.png", e.mask(size)),
            "object_masks": [_png(out / f"{k:05d}_mask{j}.png", m) for j, m in enumerate(e.object_masks(size))],
            "boxes": [list(b) for b in e.boxes(size)],
            "source_prompt": e.source_caption, "target_prompt": e.target_caption,
            "instruction": e.instruction, "words": [list(w) for w in e.words()],
        }
        rows.append(row)
    (out / "edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
