"""``ToTensor`` as torchvision defines it for PIL images: (C, H, W) float32 in [0, 1] (uint8 / 255)."""

import numpy as np
import torch


class ToTensor:
    def __call__(self, pic):
        a = np.array(pic)
        if a.ndim == 2:
            a = a[:, :, None]
        t = torch.from_numpy(a.transpose(2, 0, 1).copy())
        return t.float().div(255) if t.dtype == torch.uint8 else t.float()


class Resize:
    """``Resize(size, interpolation)`` on tensors as torchvision 0.15 computes it (MDE-Edit's pin):
    an int ``size`` is the smaller edge; bilinear without antialiasing (0.15's tensor default);
    dtypes other than float32/64 are cast to float32 and back. PIL images are not supported (the
    code passes tensors only)."""

    def __init__(self, size, interpolation=2, max_size=None, antialias=None):
        if interpolation not in (2, "bilinear") and getattr(interpolation, "value", None) != "bilinear":
            raise NotImplementedError("this stand-in resizes bilinearly only")
        self.size = size

    def __call__(self, img):
        import torch.nn.functional as F

        if not isinstance(img, torch.Tensor):
            raise NotImplementedError("this stand-in resizes tensors only")
        h, w = img.shape[-2:]
        if isinstance(self.size, int):
            short, long = (h, w) if h <= w else (w, h)
            new_short, new_long = self.size, int(self.size * long / short)
            size = (new_short, new_long) if h <= w else (new_long, new_short)
        else:
            size = tuple(self.size)
        shape = img.shape
        x = img.reshape(-1, 1, h, w)
        dtype = x.dtype
        if dtype not in (torch.float32, torch.float64):
            x = x.float()
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        if dtype != y.dtype:
            y = y.to(dtype)
        return y.reshape(*shape[:-2], *size)
