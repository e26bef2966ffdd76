"""Fit images of any size to a model's square input and back (tensors only).

``pad`` (default) pads the short side by edge replication to a square, then resizes; ``resize``
stretches. :class:`Fit` remembers what was done so the edit returns at the input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FIT_MODES = ("pad", "resize")


@dataclass(frozen=True)
class Fit:
    height: int
    width: int
    size: int
    mode: str
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, right, top, bottom

    @classmethod
    def plan(cls, height: int, width: int, size: int, mode: str = "pad") -> "Fit":
        if mode not in FIT_MODES:
            raise ValueError(f"fit mode must be one of {FIT_MODES}, got {mode!r}")
        pad = (0, 0, 0, 0)
        if mode == "pad" and height != width:
            d = abs(height - width)
            a, b = d // 2, d - d // 2
            pad = (a, b, 0, 0) if height > width else (0, 0, a, b)
        return cls(height, width, size, mode, pad)

    @property
    def identity(self) -> bool:
        return self.height == self.size and self.width == self.size

    def to_model(self, x: torch.Tensor, binary: bool = False) -> torch.Tensor:
        """(B, C, H, W) at input size -> (B, C, size, size)."""
        if self.identity:
            return x
        if any(self.pad):
            x = F.pad(x, self.pad, mode="constant" if binary else "replicate")
        if binary:
            return (F.interpolate(x.float(), size=(self.size, self.size), mode="area") > 0).float()
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, size, size) -> (B, C, H, W) at the input size."""
        if self.identity:
            return x
        left, right, top, bottom = self.pad
        h, w = self.height + top + bottom, self.width + left + right
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        return x[:, :, top : top + self.height, left : left + self.width]
