"""``save_image`` for a (C, H, W) or (1, C, H, W) tensor in [0, 1], as torchvision rounds it
(x * 255 + 0.5, clamped, to uint8); a batch of several images is written side by side (torchvision
makes a grid with 2-pixel padding; the drivers never read those files)."""

import numpy as np
import torch
from PIL import Image


def save_image(tensor, fp, nrow=8, **kwargs):
    t = tensor.detach().cpu()
    if t.dim() == 4:
        t = torch.cat(list(t), dim=2)
    if t.shape[0] == 1:
        t = t.expand(3, *t.shape[1:])
    a = t.float().mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    Image.fromarray(np.ascontiguousarray(a)).save(fp)
