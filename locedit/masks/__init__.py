"""Mask operations. One convention everywhere: float tensors (B, 1, H, W) with values in [0, 1].

File and PIL input/output lives in the CLI; these functions take and return tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import MaskError


def check_mask(mask: torch.Tensor, size: tuple[int, int] | None = None, what: str = "mask") -> torch.Tensor:
    """Validate a (B, 1, H, W) mask: right size, not empty. Returns it as float."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise MaskError(f"{what} must be (B, 1, H, W), got {tuple(mask.shape)}")
    if size is not None and tuple(mask.shape[-2:]) != tuple(size):
        h, w = mask.shape[-2:]
        raise MaskError(f"{what} is {w}x{h} but the image is {size[1]}x{size[0]}")
    if not bool((mask > 0).any()):
        raise MaskError(f"{what} is empty (no pixel set)")
    return mask.float()


def to_latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Binary latent-resolution mask: a latent cell is in when any of its pixels is."""
    m = F.adaptive_max_pool2d((mask > 0.5).float(), latent_hw)
    return m


def dilate(mask: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Binary dilation with a (2r+1)x(2r+1) square."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


@dataclass(frozen=True)
class Region:
    """A prompt word (one or more words) tied to a mask (1, 1, S, S) in [0, 1] at the model's size
    (a box is a rectangular mask)."""

    word: str
    mask: torch.Tensor
