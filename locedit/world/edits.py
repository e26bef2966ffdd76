"""Edits of shapes-world scenes with exact ground truth.

Every edit carries the source and target scenes; from them come the captions, an instruction,
the edited objects' masks and boxes, and the exact target render.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np

from .scene import BACKGROUNDS, COLOURS, SHAPES, Scene, _article, full_masks, render, sample_scene

EDIT_KINDS = ("colour", "shape", "texture", "background", "two")


@dataclass(frozen=True)
class Edit:
    kind: str
    source: Scene
    target: Scene
    edited: tuple[int, ...]  # indices into scene.objects (empty for a background edit)
    instruction: str

    @property
    def source_caption(self) -> str:
        return self.source.caption()

    @property
    def target_caption(self) -> str:
        return self.target.caption()

    def words(self) -> list[tuple[str, str]]:
        """(source word, target word) of each edited object: its shape, the word P2P blends on."""
        if not self.edited:
            return [("background", "background")]
        return [(self.source.objects[k].shape, self.target.objects[k].shape) for k in self.edited]

    def mask(self, size: int) -> np.ndarray:
        """(size, size) bool: where the edit may change pixels (footprints before and after;
        for a background edit, everything outside the objects)."""
        if not self.edited:
            _, masks = render(self.source, size)
            return ~np.any(masks, axis=0) if masks else np.ones((size, size), bool)
        src, tgt = full_masks(self.source, size), full_masks(self.target, size)
        return np.any([src[k] | tgt[k] for k in self.edited], axis=0)

    def object_masks(self, size: int) -> list[np.ndarray]:
        """One mask per edited object (source | target footprint)."""
        src, tgt = full_masks(self.source, size), full_masks(self.target, size)
        return [src[k] | tgt[k] for k in self.edited]

    def boxes(self, size: int) -> list[tuple[int, int, int, int]]:
        """Pixel boxes (x0, y0, x1, y1), exclusive ends, of the edited objects' masks."""
        out = []
        for m in self.object_masks(size):
            ys, xs = np.nonzero(m)
            out.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        return out

    def render_source(self, size: int = 64) -> np.ndarray:
        return render(self.source, size)[0]

    def render_target(self, size: int = 64) -> np.ndarray:
        return render(self.target, size)[0]


def _name(scene: Scene, k: int) -> str:
    """How an instruction refers to object k: 'the circle', or 'the red circle' when ambiguous."""
    o = scene.objects[k]
    same = sum(1 for p in scene.objects if p.shape == o.shape)
    return f"the {o.shape}" if same == 1 else f"the {o.colour} {o.shape}"


def _recolour(rng: random.Random, scene: Scene, k: int, avoid: set[str] = frozenset()) -> str:
    used = {o.colour for o in scene.objects} | set(avoid)
    return rng.choice([c for c in COLOURS if c not in used])


def make_edit(rng: random.Random, scene: Scene, kind: str) -> Edit:
    """A random edit of ``kind`` on ``scene``."""
    objs = list(scene.objects)
    if kind == "colour":
        k = rng.randrange(len(objs))
        new = _recolour(rng, scene, k)
        objs[k] = replace(objs[k], colour=new)
        return Edit(kind, scene, Scene(tuple(objs), scene.background), (k,), f"make {_name(scene, k)} {new}")
    if kind == "shape":
        k = rng.randrange(len(objs))
        new = rng.choice([s for s in SHAPES if s != objs[k].shape])
        objs[k] = replace(objs[k], shape=new)
        return Edit(kind, scene, Scene(tuple(objs), scene.background), (k,), f"turn {_name(scene, k)} into {_article(new)}")
    if kind == "texture":
        k = rng.randrange(len(objs))
        new = "plain" if objs[k].texture == "striped" else "striped"
        objs[k] = replace(objs[k], texture=new)
        return Edit(kind, scene, Scene(tuple(objs), scene.background), (k,), f"make {_name(scene, k)} {new}")
    if kind == "background":
        new = rng.choice([b for b in BACKGROUNDS if b != scene.background])
        return Edit(kind, scene, Scene(scene.objects, new), (), f"make the background {new}")
    if kind == "two":
        if len(objs) < 2:
            raise ValueError("a two-object edit needs a scene with at least two objects")
        a, b = sorted(rng.sample(range(len(objs)), 2))
        ca = _recolour(rng, scene, a)
        cb = _recolour(rng, scene, b, avoid={ca})
        objs[a], objs[b] = replace(objs[a], colour=ca), replace(objs[b], colour=cb)
        text = f"make {_name(scene, a)} {ca} and {_name(scene, b)} {cb}"
        return Edit(kind, scene, Scene(tuple(objs), scene.background), (a, b), text)
    raise ValueError(f"unknown edit kind {kind!r}; choose one of {EDIT_KINDS}")


def sample_edit(rng: random.Random, kind: str | None = None, n_objects: int | None = None) -> Edit:
    kind = kind or rng.choice(EDIT_KINDS)
    n = n_objects or (rng.choice((2, 3)) if kind == "two" else None)
    return make_edit(rng, sample_scene(rng, n_objects=n), kind)


def edit_from_seed(seed: int, kind: str | None = None, **kwargs) -> Edit:
    return sample_edit(random.Random(seed), kind, **kwargs)
