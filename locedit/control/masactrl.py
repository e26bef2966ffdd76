"""MasaCtrl's mutual self-attention (Cao et al., ICCV 2023, Sec. 3.2, Eq. 4-5; TencentARC/MasaCtrl,
``masactrl/masactrl.py``).

From sampling step S (``start_step``, default 4) on, and in the transformer blocks from L
(``start_layer``, default 10) on, the target branch's self-attention keeps its own queries but
takes the *source* branch's keys and values (Eq. 4:
``Attention(Q_t, K_s, V_s) = softmax(Q_t K_s^T / sqrt(d)) V_s``), in the unconditional and the
conditional half alike; the source branch is unchanged. Blocks are counted in the UNet's forward
order through the down, mid and up blocks (SD 1.x has 16: L = 10 is the decoder's last six), as
the code counts them (``cur_att_layer // 2`` over the self- and cross-attention calls).

The mask-guided variant (Sec. 3.3, Eq. 6-7, ``MutualSelfAttentionControlMask``): with a source
mask M_s and a target mask M_t (nearest-resized to each map), a target query in the foreground
(M_t = 1) attends only to source keys in the foreground (M_s = 1), a background query only to the
background; the code adds ``finfo.min`` to the excluded logits and blends the two outputs with
M_t, which is the same per query as this single masked softmax. With one user mask, M_s = M_t.

Differences from the authors' code: none in the arithmetic. The code counts steps and layers by
counting attention calls; here the step clock and the site's position give the same numbers. The
automatic masks of ``MutualSelfAttentionControlMaskAuto`` (from a word's cross-attention) are
:class:`MutualSelfAttentionAuto`.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from ..attention import AttentionController, BatchLayout, Site, StepClock

_BLOCK = re.compile(r"^(down_blocks|mid_block|up_blocks)(?:\.(\d+))?\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.")
_PLACES = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def block_order(sites: list[Site]) -> dict[str, int]:
    """Site name -> index of its transformer block in the UNet's forward order (down blocks, the
    mid block, up blocks; within a block its attentions, then their transformer blocks): MasaCtrl's
    layer index. Self- and cross-attention of one transformer block share the index."""
    keys = {}
    for s in sites:
        m = _BLOCK.match(s.name)
        if m is None:
            raise ValueError(f"not a transformer-block attention: {s.name}")
        keys[s.name] = (_PLACES[m[1]], int(m[2] or 0), int(m[3]), int(m[4]))
    order = {k: i for i, k in enumerate(sorted(set(keys.values())))}
    return {name: order[k] for name, k in keys.items()}


class MutualSelfAttention(AttentionController):
    """The target's self-attention reads the source's keys and values (see the module docstring).

    ``blocks``: :func:`block_order` of the UNet's sites; ``masks``: optional (M_s, M_t), each
    (1, 1, h, w) in {0, 1} at the latent size."""

    reads = frozenset({("source", "uncond"), ("source", "cond")})
    writes = frozenset({("target", "uncond"), ("target", "cond")})

    def __init__(self, start_step: int, start_layer: int, num_steps: int, blocks: dict[str, int],
                 masks: tuple[torch.Tensor, torch.Tensor] | None = None, clock: StepClock | None = None):
        super().__init__(clock or StepClock(num_steps=num_steps), BatchLayout.cfg(("source", "target")))
        self.start_step = start_step
        self.start_layer = start_layer
        self.blocks = blocks
        self.masks = masks
        self._bias: dict[int, torch.Tensor] = {}

    def wants(self, site: Site) -> bool:
        return (self.clock.phase == "sample" and site.kind == "self" and self.clock.step >= self.start_step
                and self.blocks.get(site.name, -1) >= self.start_layer)

    def rewrites_qkv(self, site: Site) -> bool:
        return True

    def edit_qkv(self, query, key, value, site):
        # (B, heads, L, D): each target row takes its source row's keys and values (same condition)
        key, value = key.clone(), value.clone()
        for s, t in self.layout.pairs():
            key[t], value[t] = key[s], value[s]
        return query, key, value

    def rewrites_scores(self, site: Site) -> bool:
        return self.masks is not None

    def edit_scores(self, scores, site):
        # (B, heads, Q, K): a target query sees only the source keys on its own side of the masks
        q = scores.shape[2]
        bias = self._bias.get(q)
        if bias is None:
            side = int(round(q ** 0.5))
            ms, mt = (F.interpolate(m.float(), size=(side, side)).flatten() for m in self.masks)  # nearest
            bias = (mt[:, None] != ms[None, :]).to(scores.dtype) * torch.finfo(scores.dtype).min
            self._bias[q] = bias
        scores = scores.clone()
        for _, t in self.layout.pairs():
            scores[t] = scores[t] + bias.to(scores)
        return scores


class MutualSelfAttentionAuto(MutualSelfAttention):
    """MasaCtrl's mask-guided attention with masks from cross-attention (``MutualSelfAttentionControlMaskAuto``).

    During each step the conditional rows' cross-attention maps at the map level (16x16 on SD) are
    kept for one word's tokens - the source row's at ``source_tokens``, the target row's at
    ``target_tokens`` - averaged over heads and the layers seen so far in this step, summed over the
    word's tokens and min-max normalised (the code's ``aggregate_cross_attn_map``). At a controlled
    self-attention site the source map thresholded at ``threshold`` (0.1) is the keys' foreground
    M_s and the target map thresholded at the same value, M_t, picks each query's output: out = M_t *
    attention over the foreground keys + (1 - M_t) * attention over the background keys (both maps
    nearest-resized to the site first, then thresholded, as the code's ``spatial_mask[spatial_mask
    >= thres] = 1``). 0.2 weighed the queries by the target's soft map, which the code never did
    (issue 32: 0.28 on the target latent). Until a cross-attention map has been seen in a step, the plain mutual attention runs (as
    the code's ``len(self.cross_attns) == 0`` branch). Here the two masked softmaxes are formed from
    the one probability matrix (the masked softmax equals the renormalised product with the mask),
    mixed per query: the same numbers as the code's two attention calls and blend."""

    reads = frozenset({("source", "uncond"), ("source", "cond"), ("target", "cond")})

    def __init__(self, start_step: int, start_layer: int, num_steps: int, blocks: dict[str, int],
                 source_tokens: list[int], target_tokens: list[int], map_level: int, threshold: float = 0.1,
                 clock: StepClock | None = None):
        super().__init__(start_step, start_layer, num_steps, blocks, None, clock)
        self.source_tokens, self.target_tokens = list(source_tokens), list(target_tokens)
        self.map_level = map_level
        self.threshold = threshold
        self._sum: torch.Tensor | None = None  # (2, h, w): source and target maps summed over layers
        self._layers = 0
        self.last_masks: tuple[torch.Tensor, torch.Tensor] | None = None  # (M_s, m_t) at the map level

    @property
    def last_blend_mask(self):
        """(1, 1, h, w) the last step's source foreground M_s at the map level (the panel's mask)."""
        return None if self.last_masks is None else self.last_masks[0][None, None]

    def wants(self, site: Site) -> bool:
        if self.clock.phase == "sample" and site.kind == "cross" and site.level == self.map_level:
            return True
        return super().wants(site)

    def rewrites_qkv(self, site: Site) -> bool:
        return site.kind == "self"

    def edit_probs(self, probs, site):
        if site.kind == "cross":
            self._record(probs)
            return probs
        if self._sum is None:  # no map yet in this step: plain mutual self-attention
            return probs
        side = int(round(probs.shape[2] ** 0.5))
        maps = self._sum / self._layers
        lo = maps.flatten(1).min(1).values[:, None, None]
        hi = maps.flatten(1).max(1).values[:, None, None]
        norm = (maps - lo) / (hi - lo).clamp_min(torch.finfo(maps.dtype).tiny)
        self.last_masks = ((norm[0] >= self.threshold).float(), (norm[1] >= self.threshold).float())
        small = F.interpolate(norm[:, None], size=(side, side)).flatten(1)  # nearest, as the code
        keys_fg = (small[0] >= self.threshold).to(probs.dtype)  # (K,)
        weight = (small[1] >= self.threshold).to(probs.dtype)[:, None]  # (Q, 1): the target's mask M_t
        probs = probs.clone()
        for _, t in self.layout.pairs():
            p = probs[t]  # (heads, Q, K)
            fg, bg = p * keys_fg, p * (1 - keys_fg)
            fg, bg = _renormalise(fg), _renormalise(bg)
            probs[t] = weight * fg + (1 - weight) * bg
        return probs

    def _record(self, probs):
        s, t = self.layout.index("source", "cond"), self.layout.index("target", "cond")
        side = int(round(probs.shape[2] ** 0.5))
        src = probs[s].float().mean(0)[:, self.source_tokens].sum(-1).view(side, side)
        tgt = probs[t].float().mean(0)[:, self.target_tokens].sum(-1).view(side, side)
        both = torch.stack([src, tgt])
        self._sum = both if self._sum is None else self._sum + both
        self._layers += 1

    def after_step(self, latents):
        self._sum, self._layers = None, 0
        return latents


def _renormalise(p: torch.Tensor) -> torch.Tensor:
    """Rows of ``p`` scaled to sum to 1: the masked softmax from the unmasked one; a row with no key
    left is uniform, as the code's softmax over logits that all carry ``finfo.min``."""
    total = p.sum(-1, keepdim=True)
    return torch.where(total > 0, p / total.clamp_min(torch.finfo(p.dtype).tiny), torch.full_like(p, 1.0 / p.shape[-1]))
