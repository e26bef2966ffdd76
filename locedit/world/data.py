"""The shapes world as training and evaluation data: the seed split and batches of rendered scenes
and edits as tensors. Scene code only (no model), so the gates and the trainers both build on it."""

from __future__ import annotations

import random

import numpy as np
import torch

from .edits import sample_edit
from .scene import render, sample_scene

# training draws scenes with seeds below this; every evaluation (the gates) from it up
HELD_OUT_SEED = 1_000_000
IMAGE_SIZE = 64


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) list -> (B, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def scene_batch(rng: random.Random, n: int, with_scenes: bool = False):
    scenes = [sample_scene(rng) for _ in range(n)]
    x, caps = to_tensor([render(s, IMAGE_SIZE)[0] for s in scenes]), [s.caption() for s in scenes]
    return (x, caps, scenes) if with_scenes else (x, caps)


def edit_batch(rng: random.Random, n: int, with_edits: bool = False):
    edits = [sample_edit(rng) for _ in range(n)]
    src = to_tensor([e.render_source(IMAGE_SIZE) for e in edits])
    tgt = to_tensor([e.render_target(IMAGE_SIZE) for e in edits])
    return (src, tgt, [e.instruction for e in edits]) + ((edits,) if with_edits else ())
