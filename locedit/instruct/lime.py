"""LIME: localized image editing for InstructPix2Pix (Simsar et al., 2024), no mask, no training.

1. Localisation (paper Sec. 3.1), during a plain IP2P run:
   - features: the outputs of the self-attention layers of the image-conditioned row
     (eps(c_I, 0)) at every resolution, averaged over the feature steps, bilinearly resized to a
     common side, concatenated over layers and L2-normalised per pixel; k-means (k = 8,
     scikit-learn, seeded) clusters the pixels;
   - attention: the cross-attention of the instruction tokens in the text row (eps(c_I, c_T)),
     averaged over heads, layers, attention steps and the kept tokens (start-of-text, stop words,
     end-of-text and padding are ignored);
   - the RoI is the union of the clusters that the top ``points`` (100) attention pixels fall in.
2. Edit (Sec. 3.2, Eq. 3): IP2P again from the same noise; during the regularised steps, in every
   cross-attention layer of the text row, the logits of unrelated tokens (everything but the kept
   instruction tokens) are set to -inf at RoI pixels, so their probability there is exactly zero.
   A user mask may replace the found RoI.

Defaults are the paper's: 100 steps, features from steps 30-50, attention from steps 1-75,
s_I 1.5 and s_T 7.5 for localisation, s_T 3.5 for the edit, regularisation during steps 1-75.
The authors' notebook differs (30 steps, top-1 point, one timestep, 5.5/2.0 scales, cuML k-means,
NLTK stop words downloaded at import); we ship a stop-word list instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from ..attention import AttentionController, Site, unet_sites
from ..diffusion import ModelBundle
from ..diffusion.text import word_tokens
from ..errors import LoceditError
from .ip2p import IP2P_LAYOUT, IP2POptions, instruct_edit


def stop_words() -> frozenset[str]:
    text = resources.files("locedit.instruct").joinpath("stopwords.txt").read_text()
    return frozenset(w.strip().lower() for w in text.splitlines() if w.strip() and not w.startswith("#"))


def content_tokens(tokenizer, instruction: str) -> list[int]:
    """Token positions of the instruction's words that are not stop words (start/end excluded)."""
    stops = stop_words()
    out = []
    for word, positions in word_tokens(tokenizer, instruction):
        if word.strip(".,!?;:'\"").lower() not in stops:
            out.extend(positions)
    return out


@dataclass(frozen=True)
class LIMEOptions:
    clusters: int = 8
    points: int = 100
    feature_steps: tuple[float, float] = (0.30, 0.50)  # fractions of the steps (paper: 30-50 of 100)
    attention_steps: tuple[float, float] = (0.0, 0.75)  # paper: 1-75 of 100
    regularize_steps: tuple[float, float] = (0.0, 0.75)
    feature_side: int | None = None  # common side of the fused features; None = image side / 2 (paper: 256)
    localize_guidance: IP2POptions = IP2POptions(1.5, 7.5)
    edit_guidance: IP2POptions = IP2POptions(1.5, 3.5)
    seed: int = 0  # k-means

    def __post_init__(self):
        if self.clusters < 1 or self.points < 1:
            raise LoceditError("clusters and points must be >= 1")
        for name in ("feature_steps", "attention_steps", "regularize_steps"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise LoceditError(f"{name} must be 0 <= start <= end <= 1, got {(lo, hi)}")


def _in_window(clock, window) -> bool:
    lo, hi = window
    return int(lo * clock.num_steps) <= clock.step < max(int(hi * clock.num_steps), int(lo * clock.num_steps) + 1)


class LocalisationRecorder(AttentionController):
    """Collects the text row's cross-attention of the kept tokens during the attention steps.
    (Self-attention outputs are taken by forward hooks, see :func:`feature_hooks`.)"""

    def __init__(self, tokens: list[int], side: int, window):
        super().__init__()
        self.tokens = list(tokens)
        self.side = side
        self.window = window
        self.sum = torch.zeros(side, side)
        self.count = 0

    def wants(self, site: Site) -> bool:
        return site.kind == "cross" and _in_window(self.clock, self.window) and bool(self.tokens)

    def edit_probs(self, probs, site):
        row = self.layout.index("edit", "image+text")
        s = int(round(probs.shape[2] ** 0.5))
        m = probs[row][:, :, self.tokens].mean(dim=(0, 2)).reshape(1, 1, s, s).float().detach().cpu()
        self.sum += F.interpolate(m, size=(self.side, self.side), mode="bilinear", align_corners=False)[0, 0]
        self.count += 1
        return probs

    def attention(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)


@contextlib.contextmanager
def feature_hooks(unet, clock, window, side: int, row: int):
    """Forward hooks on every self-attention module; accumulates its output for batch ``row``,
    resized to ``side``, during the window's steps. Yields a dict site name -> [sum, count]."""
    sites = [s for s in unet_sites(unet) if s.kind == "self"]
    modules = dict(unet.named_modules())
    store: dict[str, list] = {}
    handles = []
    for s in sites:
        module = modules[s.name[: -len(".processor")]]

        def hook(mod, args, output, name=s.name):
            if not _in_window(clock, window):
                return
            x = output[row].detach().float().cpu()  # (Q, C)
            q, c = x.shape
            g = int(round(q ** 0.5))
            x = x.transpose(0, 1).reshape(1, c, g, g)
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)[0]
            entry = store.setdefault(name, [torch.zeros_like(x), 0])
            entry[0] += x
            entry[1] += 1

        handles.append(module.register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def fuse_features(store: dict[str, list]) -> torch.Tensor:
    """(C_total, S, S): per-layer step averages concatenated, L2-normalised per pixel."""
    if not store:
        raise LoceditError("no features were recorded (the feature steps saw no UNet call)")
    feats = torch.cat([s / max(n, 1) for s, n in store.values()], dim=0)
    return feats / feats.norm(dim=0, keepdim=True).clamp_min(1e-12)


def cluster(features: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k-means labels (S, S) of the fused features' pixels (scikit-learn, seeded)."""
    from sklearn.cluster import KMeans

    c, s, _ = features.shape
    x = features.reshape(c, -1).T.numpy().astype(np.float64)
    k = min(k, x.shape[0])
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
    return torch.from_numpy(labels.reshape(s, s).astype(np.int64))


def region_of_interest(labels: torch.Tensor, attention: torch.Tensor, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(RoI (S, S) bool, indices of the top points): union of the clusters hit by the top points."""
    flat = attention.flatten()
    top = flat.topk(min(points, flat.numel())).indices
    hit = labels.flatten()[top].unique()
    return torch.isin(labels, hit), top


class AttentionRegularizer(AttentionController):
    """LIME Eq. 3: in the text row, logits of unrelated tokens at RoI pixels -> -inf."""

    def __init__(self, roi: torch.Tensor, related: list[int], num_tokens: int, window):
        super().__init__()
        self.roi = roi.float()  # (S, S)
        self.unrelated = torch.ones(num_tokens, dtype=torch.bool)
        self.unrelated[list(related)] = False
        self.window = window
        self._cache: dict[int, torch.Tensor] = {}

    def wants(self, site: Site) -> bool:
        return site.kind == "cross" and bool(self.roi.any()) and _in_window(self.clock, self.window)

    def roi_at(self, side: int, device) -> torch.Tensor:
        if side not in self._cache:
            m = F.interpolate(self.roi[None, None], size=(side, side), mode="area")[0, 0] > 0.5
            self._cache[side] = m.flatten().to(device)
        return self._cache[side]

    def edit_scores(self, scores, site):
        row = self.layout.index("edit", "image+text")
        side = int(round(scores.shape[2] ** 0.5))
        pix = self.roi_at(side, scores.device)  # (Q,)
        block = pix[:, None] & self.unrelated.to(scores.device)[None, :]  # (Q, K)
        scores = scores.clone()
        scores[row] = scores[row].masked_fill(block[None], float("-inf"))
        return scores


@dataclass
class LIMEResult:
    latents: torch.Tensor  # (1, C, h, w)
    roi: torch.Tensor  # (S, S) bool at the feature side
    labels: torch.Tensor | None  # (S, S) cluster labels (None with a user mask)
    attention: torch.Tensor | None  # (S, S)
    top_points: torch.Tensor | None
    tokens: list[int]


def localize(bundle: ModelBundle, image: torch.Tensor, instruction: str, num_steps: int, options: LIMEOptions,
             seed: int, progress=None):
    """Run plain IP2P once, recording features and attention; returns (roi, labels, attention, top, tokens)."""
    tokens = content_tokens(bundle.tokenizer, instruction)
    if not tokens:
        raise LoceditError(f"the instruction {instruction!r} has no content word (only stop words)")
    side = options.feature_side or bundle.image_size // 2
    rec = LocalisationRecorder(tokens, side, options.attention_steps)
    with feature_hooks(bundle.unet, rec.clock, options.feature_steps, side, IP2P_LAYOUT.index("edit", "image")) as store:
        instruct_edit(bundle, image, instruction, num_steps, options.localize_guidance,
                      torch.Generator().manual_seed(seed), controller=rec, progress=progress)
        feats = fuse_features(store)
    labels = cluster(feats, options.clusters, options.seed)
    roi, top = region_of_interest(labels, rec.attention(), options.points)
    return roi, labels, rec.attention(), top, tokens, feats


def lime_edit(bundle: ModelBundle, image: torch.Tensor, instruction: str, num_steps: int = 100,
              options: LIMEOptions = LIMEOptions(), seed: int = 0, mask: torch.Tensor | None = None,
              progress=None) -> LIMEResult:
    """Localise (or take ``mask`` (1, 1, S, S)) and edit with attention regularisation."""
    if mask is not None:
        side = options.feature_side or bundle.image_size // 2
        roi = F.interpolate(mask.float(), size=(side, side), mode="area")[0, 0] > 0.5
        labels = attention = top = None
        tokens = content_tokens(bundle.tokenizer, instruction)
        if not tokens:
            raise LoceditError(f"the instruction {instruction!r} has no content word (only stop words)")
    else:
        roi, labels, attention, top, tokens, _ = localize(bundle, image, instruction, num_steps, options, seed, progress)
    reg = AttentionRegularizer(roi.cpu(), tokens, bundle.max_tokens, options.regularize_steps)
    z = instruct_edit(bundle, image, instruction, num_steps, options.edit_guidance,
                      torch.Generator().manual_seed(seed), controller=reg if roi.any() else None, progress=progress)
    return LIMEResult(z, roi, labels, attention, top, tokens)
