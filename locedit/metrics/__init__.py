"""Metrics: pixel metrics (whole or masked, PIE-Bench convention) and shapes-world ground truth."""

from .pixel import PIXEL_METRICS, l1, l2, mse, pie_masked, psnr, ssim, ssim_map
from .shapes import shapes_metrics

__all__ = ["PIXEL_METRICS", "l1", "l2", "mse", "pie_masked", "psnr", "shapes_metrics", "ssim", "ssim_map"]
