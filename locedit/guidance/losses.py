"""Losses on cross-attention maps, as pure functions.

Conventions: a map is a tensor (..., P) over P pixels (flattened side x side), non-negative,
usually the probability of one token averaged over heads and layers; a mask is a tensor of the
same pixel shape with values in [0, 1]. Several tokens stack on a leading axis (K, P). The MAG-Edit
ratio losses take the per-layer probabilities instead, a list of (heads, P, K) tensors over all K
token positions, because their authors average the loss, not the maps, over heads and layers.

Every loss computes in float32 whatever the dtype of the maps it is given (the networks may run in
fp16/bf16 and capture their maps in that dtype; BCE's clamp 1 - 1e-6 is not even representable in
half precision); the gradient flows back through the cast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8
# clamp for probabilities fed to BCE: 1 - 1e-8 rounds to 1.0 in float32, where BCE's gradient is
# ~1e12 and the peak pixel's (exactly cancelling) terms turn into noise; 1 - 1e-6 is representable
PROB_EPS = 1e-6


def token_ratio_loss(probs: list[torch.Tensor], tokens: list[int], mask: torch.Tensor) -> torch.Tensor:
    """MAG-Edit Eq. 1 (token ratio constraint), per head and per layer as the authors'
    ``compute_ca_TR`` (HelenMao/MAG-Edit, ``code_tr/network.py``):

        r_{l,h}(p) = A*_{l,h}(p) / sum_k A_{l,h,k}(p)
        L_TR = mean_{l,h} (1 - (1/|M|) sum_p M_p r_{l,h}(p))^2

    ``probs``: one (heads, P, K) tensor per layer, the injected maps A_hat of the edited branch
    over all K token positions (start, end and padding included: the paper's "relative to all
    other tokens", the code's ``attn_map.sum(-1)``); ``tokens``: the edit word's positions, whose
    maps are averaged (the code's ``mean(-1)``); ``mask`` (P,) binary. MDE-Edit's CCL (Eq. 6) is
    the same form on the attribute word.
    """
    total = probs[0].new_zeros((), dtype=torch.float32)
    mask = mask.float()
    n = mask.sum().clamp_min(EPS)
    for a in probs:
        a = a.float()
        ratio = a[..., tokens].mean(-1) / a.sum(-1).clamp_min(EPS)  # (heads, P)
        inside = (ratio * mask).sum(-1) / n
        total = total + ((1 - inside) ** 2).mean()
    return total / len(probs)


def spatial_ratio_loss(probs: list[torch.Tensor], tokens: list[int], mask: torch.Tensor, lam: float = 3.0) -> torch.Tensor:
    """MAG-Edit Eq. 2 (spatial ratio constraint), per head and per layer as the authors'
    ``compute_ca_SR`` (and MDE-Edit's code's CCL, ``compute_ca_ccl``):

        r_{l,h} = sum_p M_p A*_{l,h}(p) / sum_p A*_{l,h}(p),   L_SR = mean_{l,h} lam (1 - r) - r

    with A* the *sum* of the word's token maps (the code's ``sum(-1)``); lam = 3 gives the code's
    ``3 - 4 r``."""
    total = probs[0].new_zeros((), dtype=torch.float32)
    mask = mask.float()
    for a in probs:
        word = a[..., tokens].float().sum(-1)  # (heads, P)
        r = (word * mask).sum(-1) / word.sum(-1).clamp_min(EPS)
        total = total + (lam * (1 - r) - r).mean()
    return total / len(probs)


def with_negative(positive: torch.Tensor, negative: torch.Tensor | None, lam_p: float = 1.0,
                  lam_ng: float = 1.0) -> torch.Tensor:
    """MAG-Edit Eq. 3: L_total = lam_p L - lam_ng L_ng (L_ng: the same constraint on the negative
    tokens, so descending L_total lowers their share inside the mask)."""
    return lam_p * positive if negative is None else lam_p * positive - lam_ng * negative


def object_alignment_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """MDE-Edit Eq. 4-5 (OAL): sum_i BCE(S_i_hat, S_i) + BCE(S_i_hat / max S_i_hat, S_i).

    ``maps`` (K, P): the target words' maps (softmax over *tokens*, then averaged over heads and
    layers; values in [0, 1]); ``masks`` (K, P) binary. The authors' code took the softmax over the
    heads axis, which makes every value 1/heads and this loss's gradient exactly zero; here the
    maps come from the real attention probabilities.
    """
    maps, masks = maps.float(), masks.float()
    peak = (maps / maps.amax(dim=-1, keepdim=True).clamp_min(EPS)).clamp(PROB_EPS, 1 - PROB_EPS)
    maps = maps.clamp(PROB_EPS, 1 - PROB_EPS)
    loss = maps.new_zeros(())
    for k in range(maps.shape[0]):
        loss = loss + F.binary_cross_entropy(maps[k], masks[k]) + F.binary_cross_entropy(peak[k], masks[k])
    return loss


def quartic_alignment_loss(maps: torch.Tensor, masks: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """MDE-Edit's code's object alignment loss (``mse_loss2`` in RainbowZhuu/MDE-Edit,
    ``code/oal_utils.py``, with its default ``ls=0.1``): mean of (S_hat - S)^4, where pixels whose
    map is already within ``smoothing`` of the mask are replaced by the mask clipped to
    [smoothing, 1 - smoothing] (no gradient there). ``maps``, ``masks``: (K, P)."""
    maps, masks = maps.float(), masks.float()
    clipped = masks.clamp(smoothing, 1 - smoothing)
    close = ((maps - masks).abs() < smoothing).detach().to(maps.dtype)
    maps = maps * (1 - close) + close * clipped
    return ((maps - masks) ** 4).mean()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last axis."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=EPS)


def similarity_loss_seg(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """LocInv similarity loss with segmentation priors: 1 - mean_k cos(A_k, S_k)."""
    return 1 - cosine(maps, masks).mean()


def similarity_loss_box(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """LocInv similarity loss with box priors: mean_k cos(A_k, 1 - B_k) (attention outside the box)."""
    return cosine(maps, 1 - boxes).mean()


def overlap_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """LocInv overlap loss: 1 - mean_k (sum_p A_k S_k / sum_p A_k)."""
    maps, masks = maps.float(), masks.float()
    return 1 - ((maps * masks).sum(-1) / maps.sum(-1).clamp_min(EPS)).mean()


def adjective_loss(adj_maps: torch.Tensor, noun_maps: torch.Tensor) -> torch.Tensor:
    """LocInv adjective binding: 1 - mean over (adjective, noun) pairs of cos(A_adj, A_noun)."""
    return 1 - cosine(adj_maps, noun_maps).mean()
