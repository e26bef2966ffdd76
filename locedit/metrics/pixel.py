"""Pixel metrics, whole-image or restricted to a mask, and the PIE-Bench masking convention.

Images are float tensors (B, 3, H, W) or (3, H, W) in [0, 1]; masks (B, 1, H, W) or (H, W),
1 = counted. Every function returns one float per image as a tensor (B,).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _b(x: torch.Tensor) -> torch.Tensor:
    return x[None] if x.ndim == 3 else x


def _mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones(like.shape[0], 1, *like.shape[-2:], dtype=like.dtype, device=like.device)
    m = mask.to(like)
    while m.ndim < 4:
        m = m[None]
    return m.expand(like.shape[0], 1, *like.shape[-2:])


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over (C, H, W) of ``values`` (B, C, H, W) where ``mask`` (B, 1, H, W) is set."""
    w = mask.expand_as(values)
    return (values * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1e-12)


def mse(a, b, mask=None) -> torch.Tensor:
    a, b = _b(a).float(), _b(b).float()
    return _masked_mean((a - b) ** 2, _mask(mask, a))


def l1(a, b, mask=None) -> torch.Tensor:
    """Mean absolute difference (MagicBrush's L1)."""
    a, b = _b(a).float(), _b(b).float()
    return _masked_mean((a - b).abs(), _mask(mask, a))


def l2(a, b, mask=None) -> torch.Tensor:
    """Mean squared difference (MagicBrush's L2, which equals MSE)."""
    return mse(a, b, mask)


def psnr(a, b, mask=None, data_range: float = 1.0) -> torch.Tensor:
    """10 log10(range^2 / MSE); inf for identical images."""
    m = mse(a, b, mask)
    return torch.where(m > 0, 10 * torch.log10(data_range**2 / m.clamp_min(1e-20)), torch.full_like(m, math.inf))


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def ssim_map(a, b, data_range: float = 1.0, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004), Gaussian window 11 / 1.5, K1 0.01, K2 0.03, per channel,
    'valid' filtering (the map is smaller than the image by size - 1)."""
    a, b = _b(a).float(), _b(b).float()
    c = a.shape[1]
    g = _gaussian(size, sigma).to(a.device)
    win = (g[:, None] * g[None, :]).expand(c, 1, size, size)

    def filt(x):
        return F.conv2d(x, win, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = filt(a), filt(b)
    s_aa = filt(a * a) - mu_a**2
    s_bb = filt(b * b) - mu_b**2
    s_ab = filt(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))


def ssim(a, b, mask=None, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM; with a mask, the mean of the SSIM map over window centres inside the mask."""
    smap = ssim_map(a, b, data_range)
    a = _b(a)
    if mask is None:
        return smap.mean(dim=(1, 2, 3))
    pad = (a.shape[-1] - smap.shape[-1]) // 2
    m = _mask(mask, a.float())[:, :, pad : pad + smap.shape[-2], pad : pad + smap.shape[-1]]
    return _masked_mean(smap, m)


def pie_masked(image, mask) -> torch.Tensor:
    """PIE-Bench convention for background metrics: ``image * (1 - mask)`` over the full frame
    (the mask already has its 1-pixel border set, see :func:`locedit.bench.datasets.decode_pie_mask`)."""
    image = _b(image).float()
    return image * (1 - _mask(mask, image))


PIXEL_METRICS = {"psnr": psnr, "mse": mse, "ssim": ssim, "l1": l1, "l2": l2}
