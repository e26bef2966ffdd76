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
automatic masks of ``MutualSelfAttentionControlMaskAuto`` (from a word's cross-attention) are not
built yet.
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
