"""The shapes world: seeded scenes of 1-3 flat objects, rendered exactly at any size.

A scene is a background colour and objects, each with a shape, colour, texture, centre and size
in unit coordinates (x right, y down, both in [0, 1]). Rendering tests every pixel centre against
the shape, so masks are exact and a render at any size is the same scene. Objects in one scene
have distinct colours (the oracle tells them apart by colour) and are drawn left to right, so a
later object covers an earlier one where they overlap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
TEXTURES = ("plain", "striped")
STRIPE_SHADE = 0.5  # stripes are the object colour times this
STRIPES = 2  # (light, dark) band pairs across an object's height

VOCABULARY = (
    ["a", "an", "and", "on", "background", "the", "make", "turn", "into", "change", "to", "of", "color", "colour"]
    + list(COLOURS) + list(BACKGROUNDS) + list(SHAPES) + ["striped", "plain"]
)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    texture: str
    cx: float  # centre, unit coordinates
    cy: float
    size: float  # side of the bounding square, unit coordinates

    @property
    def box(self) -> tuple[float, float, float, float]:
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

    def phrase(self) -> str:
        tex = "striped " if self.texture == "striped" else ""
        return f"{self.colour} {tex}{self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str

    def caption(self) -> str:
        """'a red circle and a blue striped square on a gray background' (objects left to right)."""
        parts = [_article(o.phrase()) for o in sorted(self.objects, key=lambda o: o.cx)]
        if len(parts) == 1:
            objs = parts[0]
        else:
            objs = ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{objs} on {_article(self.background)} background"

    def ordered(self) -> tuple[Obj, ...]:
        return tuple(sorted(self.objects, key=lambda o: o.cx))


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) in [-1, 1]^2 object coordinates (v down)."""
    if shape == "square":
        return (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "triangle":  # apex up, base down
        return (v <= 0.9) & (v >= -1.0) & (np.abs(u) <= (v + 1.0) / 1.9 * 0.95)
    raise ValueError(f"unknown shape {shape!r}")


def object_mask(obj: Obj, size: int) -> np.ndarray:
    """(size, size) bool: pixels whose centre lies in the object (ignoring occlusion)."""
    c = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(c, c)
    u = (x - obj.cx) / (obj.size / 2)
    v = (y - obj.cy) / (obj.size / 2)
    return _inside(obj.shape, u, v)


def stripe_mask(obj: Obj, size: int) -> np.ndarray:
    """(size, size) bool: the dark stripes of a striped object (horizontal bands)."""
    c = (np.arange(size) + 0.5) / size
    _, y = np.meshgrid(c, c)
    t = (y - (obj.cy - obj.size / 2)) / obj.size  # 0..1 over the object's height
    return np.floor(t * STRIPES * 2).astype(int) % 2 == 1


def render(scene: Scene, size: int = 64) -> tuple[np.ndarray, list[np.ndarray]]:
    """(H, W, 3) uint8 image and the visible (occlusion-aware) mask of each object, in
    ``scene.objects`` order."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BACKGROUNDS[scene.background]
    owner = np.full((size, size), -1, int)
    for k, obj in sorted(enumerate(scene.objects), key=lambda ko: ko[1].cx):
        m = object_mask(obj, size)
        colour = np.array(COLOURS[obj.colour], float)
        img[m] = colour.astype(np.uint8)
        if obj.texture == "striped":
            s = m & stripe_mask(obj, size)
            img[s] = (colour * STRIPE_SHADE).astype(np.uint8)
        owner[m] = k
    return img, [owner == k for k in range(len(scene.objects))]


def full_masks(scene: Scene, size: int) -> list[np.ndarray]:
    """Each object's whole footprint, occluded parts included."""
    return [object_mask(o, size) for o in scene.objects]


def sample_scene(rng: random.Random, n_objects: int | None = None, overlap: bool | None = None) -> Scene:
    """A random scene. ``overlap``: allow neighbours to overlap partly (default: 30% of scenes)."""
    n = n_objects or rng.choice((1, 2, 2, 3, 3))
    if overlap is None:
        overlap = n > 1 and rng.random() < 0.3
    colours = rng.sample(list(COLOURS), n)
    lo, hi = {1: (0.38, 0.55), 2: (0.30, 0.42), 3: (0.22, 0.28)}[n]
    sizes = [rng.uniform(lo, hi) for _ in range(n)]
    # neighbours' boxes are apart by `gap`; a negative gap overlaps them by 15-30% of the smaller
    gap = -rng.uniform(0.15, 0.30) * min(sizes) if overlap else 0.04
    total = sum(sizes) + gap * (n - 1)
    x = rng.uniform(0.03, max(0.03, 0.97 - total))
    cy0 = rng.uniform(0.03 + max(sizes) / 2, 0.97 - max(sizes) / 2)
    objs = []
    for k in range(n):
        s = sizes[k]
        if overlap:  # roughly level with each other, so the overlap is real
            cy = min(max(cy0 + rng.uniform(-0.06, 0.06), 0.03 + s / 2), 0.97 - s / 2)
        else:
            cy = rng.uniform(0.03 + s / 2, 0.97 - s / 2)
        objs.append(Obj(rng.choice(SHAPES), colours[k], rng.choice(TEXTURES), x + s / 2, cy, s))
        x += s + gap
    return Scene(tuple(objs), rng.choice(list(BACKGROUNDS)))


def scene_from_seed(seed: int, **kwargs) -> Scene:
    return sample_scene(random.Random(seed), **kwargs)
