"""The oracle: reads a shapes-world scene back from an image.

1. Every pixel takes the nearest palette colour: a background, an object colour, or an object
   colour's stripe shade (which counts as that colour).
2. The background is the most common background colour on the image border.
3. Each object colour with enough pixels (after a 3x3 opening, which drops blur fringes) is an
   object; objects in one scene have distinct colours.
4. Shape: each candidate shape is fitted to the visible mask (its box from the mask's left edge,
   top and bottom, since occluders are drawn to the right) and compared by IoU over the pixels not
   covered by objects drawn later; the best fit wins.
5. Texture: striped when over 20% of the mask's interior (eroded by one pixel) is the stripe shade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .scene import BACKGROUNDS, COLOURS, SHAPES, STRIPE_SHADE, Obj, Scene, object_mask

_NAMES = list(BACKGROUNDS) + list(COLOURS) + list(COLOURS)
_KINDS = ["bg"] * len(BACKGROUNDS) + ["obj"] * len(COLOURS) + ["dark"] * len(COLOURS)
_PALETTE = np.array(
    list(BACKGROUNDS.values()) + list(COLOURS.values()) + [tuple(int(c * STRIPE_SHADE) for c in v) for v in COLOURS.values()],
    float,
)
MIN_AREA = 0.01  # of the image: smaller colour blobs are noise
STRIPED_FRACTION = 0.2


@dataclass
class SeenObject:
    colour: str
    shape: str
    texture: str
    mask: np.ndarray  # (H, W) bool, visible pixels
    cx: float  # centre of the visible mask, unit coordinates

    def key(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.texture)


@dataclass
class Reading:
    background: str
    objects: list[SeenObject]  # left to right

    def matches(self, scene: Scene, texture: bool = True, background: bool = True) -> bool:
        """Exactly the scene's objects (colour, shape[, texture]) and background."""
        want = sorted((o.colour, o.shape) + ((o.texture,) if texture else ()) for o in scene.objects)
        got = sorted((o.colour, o.shape) + ((o.texture,) if texture else ()) for o in self.objects)
        return want == got and (not background or self.background == scene.background)

    def find(self, colour: str) -> SeenObject | None:
        return next((o for o in self.objects if o.colour == colour), None)


def _labels(img: np.ndarray) -> np.ndarray:
    """(H, W) index into the palette."""
    d = ((img[:, :, None, :].astype(float) - _PALETTE[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def _fit_shape(mask: np.ndarray, covered: np.ndarray) -> str:
    """Best-fitting shape for a visible mask; ``covered``: pixels hidden by later objects."""
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    left, top, bottom = xs.min() / size, ys.min() / size, (ys.max() + 1) / size
    right = (xs.max() + 1) / size
    height = bottom - top
    valid = ~covered
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        # each shape's extent inside its unit box: (left, top, bottom) offsets in box units
        if shape == "square":
            s = height / 0.9
            cx, cy = left - 0.05 * s + s / 2, top - 0.05 * s + s / 2
        elif shape == "triangle":
            s = height / 0.95
            cx, cy = (left + right) / 2 if not covered.any() else left + 0.475 * s, top + s / 2
        else:
            s = height
            cx, cy = left + s / 2, top + s / 2
        cand = object_mask(Obj(shape, "red", "plain", cx, cy, s), size)
        inter = (cand & mask & valid).sum()
        union = ((cand | mask) & valid).sum()
        iou = inter / max(union, 1)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def read_scene(image: np.ndarray) -> Reading:
    """``image``: (H, W, 3) uint8 (or float in [0, 1]) shapes-world picture."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    size = img.shape[0]
    lab = _labels(img)
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    bg_counts = [(border == i).sum() for i in range(len(BACKGROUNDS))]
    background = _NAMES[int(np.argmax(bg_counts))]
    min_area = MIN_AREA * size * size
    found = []
    for ci, colour in enumerate(COLOURS):
        obj_i, dark_i = len(BACKGROUNDS) + ci, len(BACKGROUNDS) + len(COLOURS) + ci
        raw = (lab == obj_i) | (lab == dark_i)
        m = ndimage.binary_opening(raw, structure=np.ones((3, 3)))
        if m.sum() < min_area:
            continue
        comps, n = ndimage.label(m)
        areas = ndimage.sum(m, comps, range(1, n + 1))
        keep = [i + 1 for i, a in enumerate(areas) if a >= max(min_area / 2, 0.3 * max(areas))]
        if not keep:  # only scattered specks of this colour
            continue
        m = np.isin(comps, keep) | (raw & ndimage.binary_dilation(np.isin(comps, keep)))
        interior = ndimage.binary_erosion(m, structure=np.ones((3, 3)))
        region = interior if interior.sum() >= 4 else m
        dark = (lab == dark_i)[region].mean()
        ys, xs = np.nonzero(m)
        found.append(SeenObject(colour, "", "striped" if dark > STRIPED_FRACTION else "plain", m, (xs.mean() + 0.5) / size))
    found.sort(key=lambda o: o.cx)
    for k, o in enumerate(found):
        covered = np.zeros_like(o.mask)
        for later in found[k + 1 :]:
            covered |= ndimage.binary_dilation(later.mask)
        o.shape = _fit_shape(o.mask, covered)
    return Reading(background, found)


def change_seen(reading: Reading, edit) -> bool:
    """Whether ``reading`` shows the edit's change: every edited object found by its target colour
    with its target shape and texture (for a background edit: the target background)."""
    if not edit.edited:
        return reading.background == edit.target.background
    for k in edit.edited:
        want = edit.target.objects[k]
        got = reading.find(want.colour)
        if got is None or got.shape != want.shape or got.texture != want.texture:
            return False
    return True
