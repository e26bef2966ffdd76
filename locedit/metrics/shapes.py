"""Shapes-world ground-truth metrics: what no photo benchmark can measure.

For an edit with its exact target render: the error against the target inside the edited objects,
the change outside them against the source (leakage), background PSNR/SSIM, and the oracle's
success flag.
"""

from __future__ import annotations

import numpy as np
import torch

from .pixel import mse, psnr, ssim


def shapes_metrics(edited: torch.Tensor, source: torch.Tensor, target: torch.Tensor, edit_mask: torch.Tensor,
                   oracle_ok: bool | None = None) -> dict[str, float]:
    """``edited``/``source``/``target`` (3, H, W) in [0, 1]; ``edit_mask`` (H, W) bool: where the edit
    may change pixels."""
    inside = edit_mask.float()
    outside = 1 - inside
    out = {
        "inside_mse_to_target": float(mse(edited, target, inside)[0]) if inside.any() else float("nan"),
        "inside_psnr_to_target": float(psnr(edited, target, inside)[0]) if inside.any() else float("nan"),
        "outside_mse": float(mse(edited, source, outside)[0]) if outside.any() else float("nan"),
        "outside_psnr": float(psnr(edited, source, outside)[0]) if outside.any() else float("nan"),
        "outside_ssim": float(ssim(edited, source, outside)[0]) if outside.any() else float("nan"),
        "psnr_to_target": float(psnr(edited, target)[0]),
    }
    if oracle_ok is not None:
        out["oracle_success"] = float(bool(oracle_ok))
    return {k: (v if np.isfinite(v) or np.isnan(v) else 100.0) for k, v in out.items()}
