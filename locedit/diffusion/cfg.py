"""Classifier-free guidance, the one place it is written."""

from __future__ import annotations

import torch


def cfg(pred_u: torch.Tensor, pred_c: torch.Tensor, scale: float, delta: torch.Tensor | None = None) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6): pred_u + w (pred_c - pred_u), for noise or
    velocity predictions alike; ``delta``, when given, stands for pred_c - pred_u (the proximal
    threshold's shrunk difference)."""
    return pred_u + scale * ((pred_c - pred_u) if delta is None else delta)


def dual_cfg(pred_none: torch.Tensor, pred_image: torch.Tensor, pred_full: torch.Tensor, image_scale: float,
             text_scale: float) -> torch.Tensor:
    """InstructPix2Pix's guidance over two conditions (Brooks et al., CVPR 2023, Eq. 3; LIME Eq. 2):
    pred_none + s_I (pred_image - pred_none) + s_T (pred_full - pred_image), with pred_image
    conditioned on the image alone and pred_full on the image and the instruction."""
    return pred_none + image_scale * (pred_image - pred_none) + text_scale * (pred_full - pred_image)
