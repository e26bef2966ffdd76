"""Losses on cross-attention maps, as pure functions.

Conventions: a map is a tensor (..., P) over P pixels (flattened side x side), non-negative,
usually the probability of one token averaged over heads and layers; a mask is a tensor of the
same pixel shape with values in [0, 1]. Several tokens stack on a leading axis (K, P).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8
# clamp for probabilities fed to BCE: 1 - 1e-8 rounds to 1.0 in float32, where BCE's gradient is
# ~1e12 and the peak pixel's (exactly cancelling) terms turn into noise; 1 - 1e-6 is representable
PROB_EPS = 1e-6


def token_ratio_loss(edit_map: torch.Tensor, other_maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAG-Edit Eq. 1 (token ratio constraint):

        L_TR = (1 - (1/|M|) sum_p M_p * A*_i(p) / (A*_i(p) + sum_j A_j(p)))^2

    ``edit_map`` (P,) is the edit token's map A*_i, ``other_maps`` (J, P) the maps A_j of the other
    (injected) tokens, ``mask`` (P,). MDE-Edit's CCL (Eq. 6) is the same form on the attribute word.
    """
    ratio = edit_map / (edit_map + other_maps.sum(0) + EPS)
    inside = (mask * ratio).sum() / mask.sum().clamp_min(EPS)
    return (1 - inside) ** 2


def spatial_ratio_loss(edit_map: torch.Tensor, mask: torch.Tensor, lam: float = 3.0) -> torch.Tensor:
    """MAG-Edit Eq. 2 (spatial ratio constraint): r = sum_p M_p A*(p) / sum_p A*(p),
    L_SR = lam * (1 - r) - r."""
    r = (mask * edit_map).sum() / edit_map.sum().clamp_min(EPS)
    return lam * (1 - r) - r


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
    peak = (maps / maps.amax(dim=-1, keepdim=True).clamp_min(EPS)).clamp(PROB_EPS, 1 - PROB_EPS)
    maps = maps.clamp(PROB_EPS, 1 - PROB_EPS)
    loss = maps.new_zeros(())
    for k in range(maps.shape[0]):
        loss = loss + F.binary_cross_entropy(maps[k], masks[k]) + F.binary_cross_entropy(peak[k], masks[k])
    return loss


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last axis."""
    return F.cosine_similarity(a, b, dim=-1, eps=EPS)


def similarity_loss_seg(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """LocInv similarity loss with segmentation priors: 1 - mean_k cos(A_k, S_k)."""
    return 1 - cosine(maps, masks).mean()


def similarity_loss_box(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """LocInv similarity loss with box priors: mean_k cos(A_k, 1 - B_k) (attention outside the box)."""
    return cosine(maps, 1 - boxes).mean()


def overlap_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """LocInv overlap loss: 1 - mean_k (sum_p A_k S_k / sum_p A_k)."""
    return 1 - ((maps * masks).sum(-1) / maps.sum(-1).clamp_min(EPS)).mean()


def adjective_loss(adj_maps: torch.Tensor, noun_maps: torch.Tensor) -> torch.Tensor:
    """LocInv adjective binding: 1 - mean over (adjective, noun) pairs of cos(A_adj, A_noun)."""
    return 1 - cosine(adj_maps, noun_maps).mean()
