"""Edit datasets: PIE-Bench folders, generic JSONL edit specs, and ShapesEdit (generated).

Every loader yields :class:`EditItem`; images are (1, 3, H, W) float in [0, 1], masks
(1, 1, H, W) float in {0, 1}. ``KIND:PATH`` strings (``pie:/data/PIE-Bench``,
``jsonl:edits.jsonl``, ``shapes:n=100,seed=0,size=64``) name a dataset in :data:`DATASETS`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import LoceditError

PIE_SIZE = 512


@dataclass
class EditItem:
    id: str
    image: torch.Tensor
    source_prompt: str = ""
    target_prompt: str = ""
    instruction: str = ""
    mask: torch.Tensor | None = None  # union of the edited regions
    regions: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # target word -> its mask
    source_regions: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # source word -> its mask
    blend_words: tuple[str, str] | None = None
    edit_type: str = "unknown"
    target_image: torch.Tensor | None = None  # exact ground truth, when known
    extra: dict = field(default_factory=dict)  # e.g. the shapes-world Edit, for the oracle


# ---- PIE-Bench ------------------------------------------------------------------------------------------
def decode_pie_mask(rle: list[int], size: int = PIE_SIZE) -> np.ndarray:
    """PIE-Bench run-length mask: pairs [start, length, ...] over a row-major size x size array;
    after decoding, the 1-pixel border is set to 1 (as the reference code does)."""
    flat = np.zeros(size * size, np.uint8)
    for start, length in zip(rle[0::2], rle[1::2]):
        flat[int(start) : int(start) + int(length)] = 1
    m = flat.reshape(size, size)
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = 1
    return m


def strip_brackets(prompt: str) -> str:
    """'a [red] cat' -> 'a red cat' (PIE-Bench marks the changed words with brackets)."""
    return re.sub(r"\s+", " ", prompt.replace("[", "").replace("]", "")).strip()


def _readable(path: Path, where: str) -> None:
    """The file's image header (format, size limits), nothing decoded: every row is checked before the
    run writes anything."""
    from ..fileio import header_size

    try:
        header_size(path, "image")
    except LoceditError as exc:
        raise LoceditError(f"{where}: {exc}") from None


def _load_image(path: Path) -> torch.Tensor:
    from ..fileio import load_image

    return load_image(path)


def _load_mask(path: Path) -> torch.Tensor:
    from ..fileio import load_mask

    return load_mask(path)


def load_pie_bench(folder: str | Path, any_path: bool = False) -> Iterator[EditItem]:
    """PIE-Bench: ``mapping_file.json`` and ``annotation_images/``; every entry and image path is
    checked before the first item is made."""
    folder = Path(folder)
    mapping = folder / "mapping_file.json"
    if not mapping.exists():
        raise LoceditError(f"{folder} is not a PIE-Bench folder (no mapping_file.json)")
    try:
        data = json.loads(mapping.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LoceditError(f"{mapping}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LoceditError(f"{mapping}: not a JSON object of entries")
    for key, row in data.items():
        missing = [k for k in ("image_path", "original_prompt", "editing_prompt", "mask") if not isinstance(row, dict)
                   or k not in row]
        if missing:
            raise LoceditError(f"{mapping}: entry {key!r} has no {', '.join(missing)}")
        images = folder / "annotation_images"
        if not isinstance(row["image_path"], str) or not _inside(images, row["image_path"], any_path):
            raise LoceditError(f"{mapping}: entry {key!r} names an image outside {images}: {row['image_path']!r} "
                               "(--any-path allows it)")
        if not (images / row["image_path"]).is_file():
            raise LoceditError(f"{mapping}: entry {key!r} names a missing image {row['image_path']!r}")
        _readable(images / row["image_path"], f"{mapping}: entry {key!r}")
    if not data:
        raise LoceditError(f"{mapping}: no entry in it")
    return _pie_items(folder, data)


def _pie_items(folder: Path, data: dict) -> Iterator[EditItem]:
    for key in sorted(data):
        row = data[key]
        image = _load_image(folder / "annotation_images" / row["image_path"])
        words = row.get("blended_word", "").split()
        mask = torch.from_numpy(decode_pie_mask(row["mask"], image.shape[-1]).astype(np.float32))[None, None]
        yield EditItem(
            id=str(key), image=image, source_prompt=strip_brackets(row["original_prompt"]),
            target_prompt=strip_brackets(row["editing_prompt"]), instruction=row.get("editing_instruction", ""),
            mask=mask, blend_words=(words[0], words[1]) if len(words) == 2 else None,
            regions=[(words[1], mask)] if len(words) == 2 else [],
            source_regions=[(words[0], mask)] if len(words) == 2 else [], edit_type=str(row.get("editing_type_id", "unknown")),
        )


# ---- generic JSONL -----------------------------------------------------------------------------------------
def load_jsonl(path: str | Path, any_path: bool = False) -> Iterator[EditItem]:
    """One edit per line: image (or source_image), source_prompt, target_prompt, instruction, mask
    (a PNG), object_masks with words, boxes, target_image, kind; paths relative to the file. Every
    line is checked (a JSON object, an image, a target prompt or an instruction, an id no other line
    has, every file it names present and inside the file's folder unless ``any_path``) before the
    first item is made; a bad line is reported with its line number, and an empty file is refused."""
    path = Path(path)
    if not path.is_file():
        raise LoceditError(f"JSONL edit spec {path} does not exist")
    base = path.parent
    rows, ids = [], {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LoceditError(f"{path}: not readable text ({exc})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoceditError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise LoceditError(f"{path}:{n}: not a JSON object")
        if not (row.get("image") or row.get("source_image")):
            raise LoceditError(f"{path}:{n}: no 'image'")
        if not any(isinstance(row.get(k), str) and row[k].strip() for k in ("target_prompt", "instruction")):
            raise LoceditError(f"{path}:{n}: no 'target_prompt' (or 'instruction'): nothing to edit towards")
        key = str(row.get("id", n - 1))
        if key in ids:
            raise LoceditError(f"{path}:{n}: id {key!r} is also line {ids[key]}'s (each row's results and images "
                               "are keyed by it)")
        ids[key] = n
        files = [row.get("image") or row["source_image"], row.get("mask"), row.get("target_image")]
        files += list(row.get("object_masks") or [])
        for f in files:
            if f is not None and isinstance(f, str) and not _inside(base, f, any_path):
                raise LoceditError(f"{path}:{n}: names a file outside {base}: {f!r} (--any-path allows it)")
            if f is not None and (not isinstance(f, str) or not (base / f).is_file()):
                raise LoceditError(f"{path}:{n}: names a missing file {f!r}")
            if f is not None:
                _readable(base / f, f"{path}:{n}")
        rows.append((n, row))
    if not rows:
        raise LoceditError(f"{path}: no edit in it")
    return _jsonl_items(base, rows)


def _jsonl_items(base: Path, rows) -> Iterator[EditItem]:
    for n, row in rows:
        image = _load_image(base / (row.get("image") or row["source_image"]))
        mask = _load_mask(base / row["mask"]) if row.get("mask") else None
        words = row.get("words") or []
        regions, source_regions = [], []
        for k, m in enumerate(row.get("object_masks") or []):
            if k < len(words):
                pair = words[k] if isinstance(words[k], list) else [words[k], words[k]]
                loaded = _load_mask(base / m)
                regions.append((pair[1], loaded))
                source_regions.append((pair[0], loaded))
        blend = tuple(words[0]) if words and isinstance(words[0], list) and len(words[0]) == 2 else None
        yield EditItem(
            id=str(row.get("id", n - 1)), image=image, source_prompt=row.get("source_prompt", ""),
            target_prompt=row.get("target_prompt", ""), instruction=row.get("instruction", ""), mask=mask,
            regions=regions, source_regions=source_regions, blend_words=blend,
            edit_type=str(row.get("kind", row.get("edit_type", "unknown"))),
            target_image=_load_image(base / row["target_image"]) if row.get("target_image") else None,
        )


# ---- ShapesEdit ---------------------------------------------------------------------------------------------
def load_shapes(spec: str = "") -> Iterator[EditItem]:
    """``n=100,seed=0,size=64,kinds=colour+shape``: deterministic shapes-world edits with targets.
    The options are checked when called, before the first item is made."""
    from ..world.edits import EDIT_KINDS

    opts = {"n": "100", "seed": "0", "size": "64", "kinds": "+".join(EDIT_KINDS)}
    for part in filter(None, spec.split(",")):
        k, _, v = part.partition("=")
        if k not in opts:
            raise LoceditError(f"unknown ShapesEdit option {k!r}; use n, seed, size, kinds")
        opts[k] = v
    values = {}
    for k, lo in (("n", 1), ("seed", 0), ("size", 16)):
        try:
            values[k] = int(opts[k])
        except ValueError:
            raise LoceditError(f"ShapesEdit option {k}={opts[k]!r} is not an integer") from None
        if values[k] < lo:
            raise LoceditError(f"ShapesEdit option {k}={values[k]} must be >= {lo}")
    kinds = opts["kinds"].split("+")
    bad = [k for k in kinds if k not in EDIT_KINDS]
    if bad:
        raise LoceditError(f"unknown ShapesEdit kind {bad[0]!r}; choose from {'+'.join(EDIT_KINDS)}")
    return _shapes_items(values["n"], values["seed"], values["size"], kinds)


def _shapes_items(n: int, seed: int, size: int, kinds: list[str]) -> Iterator[EditItem]:
    from ..world.edits import sample_edit

    rng = random.Random(seed)
    for k in range(n):
        e = sample_edit(rng, rng.choice(kinds))
        to_t = lambda a: torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)[None]  # noqa: E731
        obj_masks = [torch.from_numpy(m.astype(np.float32))[None, None] for m in e.object_masks(size)]
        mask = torch.from_numpy(e.mask(size).astype(np.float32))[None, None]
        words = e.words()
        regions = [(w[1], m) for w, m in zip(words, obj_masks)] if obj_masks else [("background", mask)]
        source_regions = [(w[0], m) for w, m in zip(words, obj_masks)] if obj_masks else [("background", mask)]
        yield EditItem(
            id=f"shapes-{seed}-{k:05d}", image=to_t(e.render_source(size)), source_prompt=e.source_caption,
            target_prompt=e.target_caption, instruction=e.instruction, mask=mask, regions=regions,
            source_regions=source_regions,
            blend_words=words[0], edit_type=e.kind, target_image=to_t(e.render_target(size)), extra={"edit": e},
        )


DATASETS = {"pie": load_pie_bench, "jsonl": load_jsonl, "shapes": load_shapes}


def open_dataset(spec: str, any_path: bool = False) -> Iterator[EditItem]:
    """``KIND:PATH`` -> items. The files a dataset names must lie in its folder unless ``any_path``
    (the bench's ``--any-path``): a dataset from elsewhere cannot make the bench read
    ``../../etc/passwd``."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in DATASETS:
        raise LoceditError(f"dataset {spec!r} must be KIND:PATH with KIND one of {', '.join(DATASETS)}")
    return DATASETS[kind](rest) if kind == "shapes" else DATASETS[kind](rest, any_path=any_path)


def _inside(base: Path, name: str, any_path: bool) -> bool:
    """``name`` (relative to ``base``, or absolute) resolves inside ``base``, links followed."""
    return any_path or (base / name).resolve().is_relative_to(base.resolve())
