"""Learned metrics: LPIPS (AlexNet, SqueezeNet), CLIP score / CLIP-I / CLIP-T, DINO structure
distance (PIE-Bench) and DINO similarity (MagicBrush).

Pretrained weights cannot be downloaded here, so each metric takes its networks as arguments and
the ``load_*`` helpers read them from a local folder or the Hugging Face cache only, failing with
one line that says how to provide them. The LPIPS backbones are defined here (no torchvision);
their parameter names follow torchvision's (``features.N.weight``) and the LPIPS heads follow the
``lpips`` package (``lin0.model.1.weight`` ...), so converted official weights load unchanged.

Images: (B, 3, H, W) float in [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LoceditError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def weights_dir() -> Path:
    """Where metric weights are looked for: $LOCEDIT_WEIGHTS, else ~/.cache/locedit/weights."""
    return Path(os.environ.get("LOCEDIT_WEIGHTS", Path.home() / ".cache" / "locedit" / "weights"))


# ---- LPIPS ------------------------------------------------------------------------------------------------
def alexnet_features() -> nn.Sequential:
    """torchvision's AlexNet ``features`` layout; LPIPS taps relu1..relu5 (indices 1, 4, 7, 9, 11)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(True),
    )


class Fire(nn.Module):
    def __init__(self, cin, squeeze, e1, e3):
        super().__init__()
        self.squeeze, self.squeeze_activation = nn.Conv2d(cin, squeeze, 1), nn.ReLU(True)
        self.expand1x1, self.expand1x1_activation = nn.Conv2d(squeeze, e1, 1), nn.ReLU(True)
        self.expand3x3, self.expand3x3_activation = nn.Conv2d(squeeze, e3, 3, padding=1), nn.ReLU(True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1)


def squeezenet_features() -> nn.Sequential:
    """torchvision's SqueezeNet 1.1 ``features``; LPIPS taps after indices 1, 4, 7, 9, 10, 11, 12."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, 2), nn.ReLU(True), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
    )


LPIPS_NETS = {
    "alex": (alexnet_features, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
    "squeeze": (squeezenet_features, (1, 4, 7, 9, 10, 11, 12), (64, 128, 256, 384, 384, 512, 512)),
}


class _Lin(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))


class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al., CVPR 2018): unit-normalised backbone features, squared difference,
    learned 1x1 weights, spatial mean, summed over taps. ``features`` and ``taps``/``channels``
    may be replaced (tests use tiny random stand-ins)."""

    def __init__(self, net: str = "alex", features: nn.Module | None = None, taps=None, channels=None):
        super().__init__()
        build, default_taps, default_channels = LPIPS_NETS[net]
        self.net = features if features is not None else build()
        self.taps = tuple(taps or default_taps)
        chans = tuple(channels or default_channels)
        for k, c in enumerate(chans):
            setattr(self, f"lin{k}", _Lin(c))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.eval().requires_grad_(False)

    def _taps(self, x):
        out, h = [], (x * 2 - 1 - self.shift) / self.scale
        for k, layer in enumerate(self.net):
            h = layer(h)
            if k in self.taps:
                out.append(h)
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B,) distances; 0 for identical images."""
        total = 0.0
        for k, (fa, fb) in enumerate(zip(self._taps(a.float()), self._taps(b.float()))):
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{k}").model((fa - fb) ** 2).mean(dim=(2, 3))[:, 0]
        return total


def lpips_state_dict(backbone: dict, heads: dict) -> dict:
    """The state :func:`load_lpips` reads, from torchvision's AlexNet or SqueezeNet 1.1 checkpoint
    (``features.N.*``; its classifier dropped) and the LPIPS v0.1 heads (``linK.model.1.weight``, the
    ``lpips`` package's ``weights/v0.1/{alex,squeeze}.pth`` or torchmetrics' copies):

        save_file(lpips_state_dict(torch.load("squeezenet1_1-b8a52dc0.pth"), torch.load("squeeze.pth")),
                  weights_dir() / "lpips_squeeze.safetensors")
    """
    state = {"net." + k[len("features."):]: v for k, v in backbone.items() if k.startswith("features.")}
    state.update({k: v for k, v in heads.items() if k.startswith("lin")})
    return {k: v.contiguous() for k, v in state.items()}


def load_lpips(net: str = "alex", folder: str | Path | None = None) -> LPIPS:
    """LPIPS with weights from ``folder`` (default :func:`weights_dir`)/lpips_{net}.safetensors."""
    if net not in LPIPS_NETS:
        raise LoceditError(f"LPIPS net must be one of {', '.join(LPIPS_NETS)}, got {net!r}")
    path = Path(folder or weights_dir()) / f"lpips_{net}.safetensors"
    if not path.exists():
        raise LoceditError(f"LPIPS ({net}) weights not found: put lpips_{net}.safetensors (made by "
                           f"locedit.metrics.learned.lpips_state_dict from torchvision's backbone and lpips v0.1's "
                           f"heads) in {path.parent} or set LOCEDIT_WEIGHTS")
    from safetensors.torch import load_file

    model = LPIPS(net)
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("shift", "scale")]
    if missing or unexpected:
        raise LoceditError(f"{path} does not match LPIPS ({net}): missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


# ---- CLIP -------------------------------------------------------------------------------------------------
def _clip_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's input, as ``CLIPImageProcessor`` makes it from 8-bit images (what torchmetrics'
    ``CLIPScore`` and so PIE-Bench's evaluation feed it): each image to 8 bits (rounded), its short side
    resized to ``size`` by PIL's bicubic filter on the 8-bit values (the long side ``int(size * long /
    short)``), centre-cropped (offset ``(side - size) // 2``), scaled by 1/255 and CLIP-normalised in
    float32. Equal to the reference to float rounding (``bench/peers/pnp_metrics.py``); a resize in
    float (torch's bicubic) moved random-CLIP scores by up to 1.3 %."""
    import numpy as np
    from PIL import Image

    mean, std = np.asarray(CLIP_MEAN, np.float32), np.asarray(CLIP_STD, np.float32)
    out = []
    for image in images:
        arr = (image.detach().permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        h, w = arr.shape[:2]
        short, long = min(h, w), max(h, w)
        nh, nw = (size, int(size * long / short)) if h <= w else (int(size * long / short), size)
        x = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.BICUBIC))
        top, left = (nh - size) // 2, (nw - size) // 2
        x = (x[top : top + size, left : left + size] * (1 / 255)).astype(np.float32)
        out.append(torch.from_numpy((x - mean) / std).permute(2, 0, 1))
    return torch.stack(out)


def _projected(out) -> torch.Tensor:
    """transformers < 5 returns the projected embedding; 5 returns an output whose pooler_output is it."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def clip_image_embeddings(model, images: torch.Tensor) -> torch.Tensor:
    size = model.config.vision_config.image_size
    pixels = _clip_pixels(images, size).to(next(model.parameters()).device)
    return F.normalize(_projected(model.get_image_features(pixel_values=pixels)), dim=-1)


@torch.no_grad()
def clip_text_embeddings(model, tokenizer, texts: list[str]) -> torch.Tensor:
    tok = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    dev = next(model.parameters()).device
    return F.normalize(_projected(model.get_text_features(input_ids=tok.input_ids.to(dev),
                                                          attention_mask=tok.attention_mask.to(dev))), dim=-1)


def clip_score(model, tokenizer, images: torch.Tensor, texts: list[str], mask: torch.Tensor | None = None,
               box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """100 * max(cos(image, text), 0) per image (PIE-Bench's CLIP score; MagicBrush's CLIP-T
    without the factor 100). ``mask`` (B, 1, H, W): score image * mask (the edited part);
    ``box`` (x0, y0, x1, y1): score the crop (MAG-Edit's protocol)."""
    if mask is not None:
        images = images * mask
    if box is not None:
        x0, y0, x1, y1 = box
        images = images[..., y0:y1, x0:x1]
    cos = (clip_image_embeddings(model, images) * clip_text_embeddings(model, tokenizer, texts)).sum(-1)
    return 100 * cos.clamp_min(0)


def clip_i(model, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """CLIP-I (MagicBrush): cosine between the image embeddings of ``a`` and ``b``."""
    return (clip_image_embeddings(model, a) * clip_image_embeddings(model, b)).sum(-1)


def load_clip(name: str = "openai/clip-vit-large-patch14"):
    """(CLIPModel, tokenizer) from a local folder or the hub cache, never the network."""
    from transformers import CLIPModel, CLIPTokenizer

    try:
        model = CLIPModel.from_pretrained(name, local_files_only=True, use_safetensors=True)
        tok = CLIPTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:
        raise LoceditError(f"CLIP model {name!r} is not available offline: download it once into the Hugging Face "
                           f"cache (huggingface-cli download {name}) or pass a local folder") from None
    return model.eval().requires_grad_(False), tok


# ---- DINO -------------------------------------------------------------------------------------------------
def _dino_pixels(images: torch.Tensor, size: int, raw_255: bool) -> torch.Tensor:
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if raw_255:  # the PIE-Bench reference code feeds 0..255 floats to the ImageNet normalisation
        x = x * 255
    mean = torch.tensor(IMAGENET_MEAN, device=x.device)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, device=x.device)[None, :, None, None]
    return (x - mean) / std


@torch.no_grad()
def dino_key_self_similarity(model, images: torch.Tensor, raw_255: bool = True) -> torch.Tensor:
    """(B, T, T): cosine self-similarity of the last block's keys (heads concatenated), the
    structure descriptor of Tumanyan et al. used by PIE-Bench."""
    keys = {}
    if hasattr(model, "layers"):  # transformers >= 5
        layer = model.layers[-1].attention.k_proj
    else:
        layer = model.encoder.layer[-1].attention.attention.key
    handle = layer.register_forward_hook(lambda m, i, o: keys.__setitem__("k", o))
    try:
        size = model.config.image_size
        model(pixel_values=_dino_pixels(images, size, raw_255).to(next(model.parameters()).device))
    finally:
        handle.remove()
    k = F.normalize(keys["k"].float(), dim=-1)  # (B, T, D): heads are contiguous slices of D
    return k @ k.transpose(1, 2)


def dino_structure_distance(model, a: torch.Tensor, b: torch.Tensor, raw_255: bool = True) -> torch.Tensor:
    """PIE-Bench structure distance: MSE between the key self-similarity matrices of a and b."""
    return (dino_key_self_similarity(model, a, raw_255) - dino_key_self_similarity(model, b, raw_255)).pow(2).mean(dim=(1, 2))


@torch.no_grad()
def dino_similarity(model, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MagicBrush's DINO score: cosine between the CLS embeddings (ImageNet-normalised inputs)."""
    size = model.config.image_size
    dev = next(model.parameters()).device

    def cls(x):
        return F.normalize(model(pixel_values=_dino_pixels(x, size, False).to(dev)).last_hidden_state[:, 0], dim=-1)

    return (cls(a) * cls(b)).sum(-1)


def load_dino(name: str = "facebook/dino-vitb8"):
    from transformers import ViTModel

    try:
        model = ViTModel.from_pretrained(name, local_files_only=True, use_safetensors=True, add_pooling_layer=False)
    except Exception:
        raise LoceditError(f"DINO model {name!r} is not available offline: download it once into the Hugging Face "
                           f"cache (huggingface-cli download {name}) or pass a local folder") from None
    return model.eval().requires_grad_(False)
