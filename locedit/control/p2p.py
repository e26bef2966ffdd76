"""Prompt-to-Prompt attention control (Hertz et al., ICLR 2023).

Two branches, source and target, run in one batch laid out as
[source uncond, target uncond, source cond, target cond]. Only the conditional pair is edited,
as in the authors' code:

- cross-attention, for steps < int(cross_replace * N): the target's probabilities become
  ``(src @ M) * alphas + tgt * (1 - alphas)`` (replace: the word-by-word matrix, alphas 1;
  refine: the token alignment, new tokens keep their own maps; see :mod:`.alignment`), times the
  reweight equalizer when one is given (P2P Sec. 3.2, "attention re-weighting"). The authors'
  code sizes the window as int(fraction * (N + 1)); we use int(fraction * N) for both windows,
  which is the same for 50 steps at 0.8.
- self-attention at sites of level >= ``self_min_level`` (SD: maps of 32x32 and coarser), for
  steps < int(self_replace * N): the target takes the source's probabilities.
- local blend (P2P appendix, "LocalBlend"): from step int(blend_start * N), target latents are
  ``z_src + m * (z_tgt - z_src)``, with m the union of the thresholded (0.3), max-pooled,
  max-normalised maps of the blend words summed over steps, or a user mask instead. The target's
  maps are recorded *after* injection, as in the authors' code (their store holds a view of the
  probabilities that the edit then overwrites): during the injection window a swapped word's map
  is the source word's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention import AttentionController, BatchLayout, MapRequest, Site, StepClock, TokenMapStore
from ..diffusion.text import token_positions
from .alignment import refine_mapping, replace_matrix
from .options import P2P_MODES, LocalBlendOptions, P2POptions, parse_reweight  # noqa: F401 (re-exported)

class Prompt2Prompt(AttentionController):
    """The P2P controller for one (source, target) prompt pair.

    ``user_mask``: optional latent-resolution (1, 1, h, w) mask used for the local blend in place
    of the attention mask; ``blend_words``: (source word, target word) of the attention blend.
    """

    # only the conditional rows: the source's maps are read, the target's rewritten (as the authors'
    # code, which leaves the unconditional half of the batch alone)
    reads = frozenset({("source", "cond"), ("target", "cond")})
    writes = frozenset({("target", "cond")})

    def __init__(self, options: P2POptions, tokenizer, source: str, target: str, num_steps: int,
                 map_level: int, user_mask: torch.Tensor | None = None, clock: StepClock | None = None,
                 blend_words: tuple[str, str] | None = None, blend: LocalBlendOptions = LocalBlendOptions()):
        super().__init__(clock or StepClock(num_steps=num_steps), BatchLayout.cfg(("source", "target")))
        self.options = options
        self.blend = blend
        self.clock.num_steps = num_steps
        self.map_level = map_level
        length = int(tokenizer.model_max_length)
        src_ids = tokenizer(source).input_ids
        tgt_ids = tokenizer(target).input_ids
        if options.mode == "replace":
            matrix, alphas = replace_matrix(tokenizer, source, target, length), torch.ones(length)
        else:
            matrix, alphas = refine_mapping(src_ids, tgt_ids, length)
        self.matrix, self.alphas = matrix, alphas  # (K, K) source -> target tokens, (K,)
        eq = torch.ones(length)
        for word, scale in options.reweight:
            eq[token_positions(tokenizer, target, word)] = scale
        self.equalizer = eq if options.reweight else None
        self.user_mask = user_mask
        self.store = None
        if blend_words is not None and user_mask is None:
            sw, tw = blend_words
            self.store = TokenMapStore({
                "source": MapRequest("source", tuple(token_positions(tokenizer, source, sw))),
                "target": MapRequest("target", tuple(token_positions(tokenizer, target, tw))),
            })
        self.last_blend_mask: torch.Tensor | None = None
        self.blend_from_step: int | None = None  # overrides blend.start with an exact step (guidance methods)

    # ---- which sites, when ---------------------------------------------------------------------
    def _cross_active(self) -> bool:
        extra = 1 if self.options.cross_window == "n+1" else 0  # the authors' alpha table: N + 1 rows
        return self.clock.fraction_before(self.options.cross_replace, extra)

    def _self_active(self, site: Site) -> bool:
        return site.level >= self.options.self_min_level and self.clock.fraction_before(self.options.self_replace)

    def _stores(self, site: Site) -> bool:
        return (self.store is not None and self.clock.phase == "sample" and site.kind == "cross"
                and site.level == self.map_level and site.place != "mid")

    def wants(self, site: Site) -> bool:
        # "guide": latent-guidance passes (no CFG) see the same injection as the sampling pass
        if self.clock.phase not in ("sample", "guide"):
            return False
        if site.kind == "cross":
            return self._cross_active() or self._stores(site)
        return self._self_active(site)

    # ---- edits -----------------------------------------------------------------------------------
    def edit_probs(self, probs: torch.Tensor, site: Site) -> torch.Tensor:
        # probs: (B, heads, pixels, tokens) in the CFG layout
        s = self.layout.index("source", "cond")
        t = self.layout.index("target", "cond")
        if site.kind == "cross" and self._cross_active():
            src, tgt = probs[s], probs[t]
            alphas = self.alphas.to(probs)
            new = (src @ self.matrix.to(probs)) * alphas + tgt * (1 - alphas)
            if self.equalizer is not None:
                new = new * self.equalizer.to(probs)
            probs = probs.clone()
            probs[t] = new
        elif site.kind == "self" and self._self_active(site):
            probs = probs.clone()
            probs[t] = probs[s]
        if self._stores(site):  # after injection (see the module docstring)
            self.store.add(probs, site, self.layout)
        return probs

    # ---- local blend -----------------------------------------------------------------------------
    def blend_mask(self, latent_hw: tuple[int, int]) -> torch.Tensor | None:
        """(1, 1, h, w) binary blend mask at the current step, or None when no blend is set."""
        if self.user_mask is not None:
            return self.user_mask
        if self.store is None:
            return None
        maps = torch.stack([self.store.maps("source").sum(0), self.store.maps("target").sum(0)])[:, None]
        r = self.blend.pool
        maps = F.max_pool2d(maps, 2 * r + 1, stride=1, padding=r)
        maps = F.interpolate(maps, size=latent_hw)
        maps = maps / maps.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        mask = (maps > self.blend.threshold).float()
        return mask.amax(dim=0, keepdim=True)  # union of source and target word masks

    def after_step(self, latents: torch.Tensor) -> torch.Tensor:
        # latents: (2, C, h, w) = [source, target]
        if self.store is not None:
            self.store.start_step()
        if self.user_mask is None and self.store is None:
            return latents
        first = self.blend_from_step if self.blend_from_step is not None else int(self.blend.start * self.clock.num_steps)
        if self.clock.step < first:
            return latents
        mask = self.blend_mask(tuple(latents.shape[-2:])).to(latents)
        self.last_blend_mask = mask
        src, tgt = latents[0:1], latents[1:2]
        return torch.cat([src, src + mask * (tgt - src)])
