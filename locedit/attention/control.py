"""Step clock, batch layout, the controller interface and the processor that consults it.

The sampling loop owns a :class:`StepClock` and sets it before every UNet call; controllers read
the step from it and never count layer calls (counting drifts as soon as a loop adds UNet calls,
as null-text inversion and latent guidance do). The loop also declares a :class:`BatchLayout`,
naming what each batch row is, so a controller never guesses "the second half is conditional".
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .sites import Site, SiteSelector, unet_sites


@dataclass
class StepClock:
    """Where the loop is: step index ``i`` of ``num_steps`` (0 = noisiest) at ``timestep``."""

    num_steps: int = 1
    step: int = 0
    timestep: int = 0
    phase: str = "sample"  # "sample" | "invert" | "guide" | "inversion-guide" (NMG's source move): which loop set it

    def set(self, step: int, timestep: int, phase: str = "sample") -> None:
        self.step, self.timestep, self.phase = int(step), int(timestep), phase

    def fraction_before(self, fraction: float, extra: int = 0) -> bool:
        """True while ``step < int(fraction * (num_steps + extra))`` (P2P's replace windows; its code
        counts the cross-attention one over ``extra=1`` more row than there are steps)."""
        return self.step < int(fraction * (self.num_steps + extra))


@dataclass(frozen=True)
class BatchLayout:
    """What each batch row is: a (branch, condition) pair such as ("target", "cond")."""

    rows: tuple[tuple[str, str], ...]

    @classmethod
    def cfg(cls, branches: tuple[str, ...]) -> "BatchLayout":
        """[uncond rows of every branch, then cond rows of every branch] (the CFG batch)."""
        return cls(tuple((b, "uncond") for b in branches) + tuple((b, "cond") for b in branches))

    @classmethod
    def single(cls, branches: tuple[str, ...], cond: str = "cond") -> "BatchLayout":
        return cls(tuple((b, cond) for b in branches))

    def __len__(self) -> int:
        return len(self.rows)

    def index(self, branch: str, cond: str) -> int | None:
        try:
            return self.rows.index((branch, cond))
        except ValueError:
            return None

    def pairs(self, source: str = "source", target: str = "target") -> list[tuple[int, int]]:
        """(source row, target row) for every condition present in both branches."""
        out = []
        for cond in dict.fromkeys(c for _, c in self.rows):
            s, t = self.index(source, cond), self.index(target, cond)
            if s is not None and t is not None:
                out.append((s, t))
        return out


class AttentionController:
    """Base controller: changes nothing and asks for nothing.

    Subclasses override :meth:`wants` (which sites need explicit probabilities at the current
    step) and the hooks. Probabilities arrive as (batch, heads, queries, keys) with the batch
    ordered as :attr:`layout` says.

    ``reads`` / ``writes``: the (branch, condition) rows whose attention the controller reads or
    rewrites, declared by subclasses that know them; None means any row. The sampling loop leaves a
    row out of the UNet batch only when its noise prediction is not needed and no controller
    reads or writes it (:func:`locedit.pipeline.sample`).
    """

    reads: frozenset[tuple[str, str]] | None = None
    writes: frozenset[tuple[str, str]] | None = None

    def __init__(self, clock: StepClock | None = None, layout: BatchLayout | None = None):
        self.clock = clock or StepClock()
        self.layout = layout

    def wants(self, site: Site) -> bool:
        return False

    def edit_scores(self, scores: torch.Tensor, site: Site) -> torch.Tensor:
        """Pre-softmax logits (B, H, Q, K) -> logits."""
        return scores

    def rewrites_scores(self, site: Site) -> bool:
        """Whether :meth:`edit_scores` must run at this site (else the processor takes diffusers'
        own score computation)."""
        return type(self).edit_scores is not AttentionController.edit_scores

    def edit_probs(self, probs: torch.Tensor, site: Site) -> torch.Tensor:
        """Attention probabilities (B, H, Q, K) -> probabilities."""
        return probs

    def edit_qkv(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, site: Site):
        """Queries (B, H, Q, D), keys and values (B, H, K, D) -> (query, key, value), before the
        scores are computed (mutual self-attention, feature injection). Keys and values may take
        another length K' (e.g. a row attending to its own and another row's tokens)."""
        return query, key, value

    def rewrites_qkv(self, site: Site) -> bool:
        """Whether :meth:`edit_qkv` must run at this site."""
        return type(self).edit_qkv is not AttentionController.edit_qkv

    def after_step(self, latents: torch.Tensor) -> torch.Tensor:
        """Called by the loop with the new latents (one row per branch) after each step."""
        return latents

    def feature_hooks(self, unet) -> list[tuple[torch.nn.Module, object]]:
        """(module, forward hook) pairs to register on ``unet`` for the loop (PyTorch's
        ``register_forward_hook``: the hook may return a replacement output), for controllers that
        act on features outside attention (Plug-and-Play's residual-block features). Removed with
        the processors, in ``finally``."""
        return []


def _union(sets):
    out = frozenset()
    for s in sets:
        if s is None:
            return None
        out |= s
    return out


class Chain(AttentionController):
    """Several controllers on one UNet, sharing one clock and one layout, applied in order."""

    def __init__(self, controllers: list[AttentionController]):
        super().__init__(controllers[0].clock, controllers[0].layout)
        self.controllers = controllers
        for c in controllers:
            c.clock = self.clock
        self.layout = self._layout  # every member sees the chain's layout, not only the first

    @property
    def layout(self):
        return self._layout

    @layout.setter
    def layout(self, value):
        self._layout = value
        for c in getattr(self, "controllers", []):
            c.layout = value

    @property
    def reads(self):
        return _union(c.reads for c in self.controllers)

    @property
    def writes(self):
        return _union(c.writes for c in self.controllers)

    def wants(self, site: Site) -> bool:
        return any(c.wants(site) for c in self.controllers)

    def rewrites_scores(self, site: Site) -> bool:
        return any(c.wants(site) and c.rewrites_scores(site) for c in self.controllers)

    def edit_scores(self, scores, site):
        for c in self.controllers:
            if c.wants(site) and c.rewrites_scores(site):
                scores = c.edit_scores(scores, site)
        return scores

    def edit_probs(self, probs, site):
        for c in self.controllers:
            if c.wants(site):
                probs = c.edit_probs(probs, site)
        return probs

    def rewrites_qkv(self, site: Site) -> bool:
        return any(c.wants(site) and c.rewrites_qkv(site) for c in self.controllers)

    def edit_qkv(self, query, key, value, site):
        for c in self.controllers:
            if c.wants(site) and c.rewrites_qkv(site):
                query, key, value = c.edit_qkv(query, key, value, site)
        return query, key, value

    def after_step(self, latents):
        for c in self.controllers:
            latents = c.after_step(latents)
        return latents

    def feature_hooks(self, unet):
        return [h for c in self.controllers for h in c.feature_hooks(unet)]

    def __getattr__(self, name):  # e.g. last_blend_mask of the engine
        if name in ("controllers", "_layout"):
            raise AttributeError(name)
        for c in self.controllers:
            if hasattr(c, name):
                return getattr(c, name)
        raise AttributeError(name)


class ControlledAttnProcessor:
    """diffusers attention processor that exposes probabilities to a controller.

    When the controller does not want this site at the current step, the original (fast, fused)
    processor runs unchanged. Otherwise attention is computed explicitly, with the same operations
    as diffusers' ``AttnProcessor``, and the controller may rewrite logits and probabilities.
    """

    def __init__(self, site: Site, controller: AttentionController, fallback):
        self.site = site
        self.controller = controller
        self.fallback = fallback

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if not self.controller.wants(self.site):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)
        if self.controller.rewrites_qkv(self.site):
            query, key, value = self._qkv(query, key, value, batch)

        probs = self._probs(attn, query, key, attention_mask, batch)  # (B*heads, Q, K)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _qkv(self, query, key, value, batch):
        def split(x):  # (B*heads, L, D) -> (B, heads, L, D)
            return x.view(batch, x.shape[0] // batch, *x.shape[1:])

        q, k, v = self.controller.edit_qkv(split(query), split(key), split(value), self.site)
        return (q.reshape(-1, *q.shape[2:]), k.reshape(-1, *k.shape[2:]), v.reshape(-1, *v.shape[2:]))

    def _probs(self, attn, query, key, attention_mask, batch):
        ctrl = self.controller
        if not ctrl.rewrites_scores(self.site):
            probs = attn.get_attention_scores(query, key, attention_mask)
        else:
            dtype = query.dtype
            if attn.upcast_attention:
                query, key = query.float(), key.float()
            scores = torch.bmm(query, key.transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask
            bh, q, k = scores.shape
            scores = ctrl.edit_scores(scores.view(batch, bh // batch, q, k), self.site).reshape(bh, q, k)
            if attn.upcast_softmax:
                scores = scores.float()
            probs = scores.softmax(dim=-1).to(dtype)
        bh, q, k = probs.shape
        if ctrl.layout is not None and len(ctrl.layout) != batch:
            raise RuntimeError(f"controller layout has {len(ctrl.layout)} rows but the UNet batch has {batch}")
        out = ctrl.edit_probs(probs.view(batch, bh // batch, q, k), self.site)
        return out.reshape(bh, q, k)


@contextlib.contextmanager
def controlled_attention(unet, controller: AttentionController, selector: SiteSelector | None = None):
    """Install :class:`ControlledAttnProcessor` at the selected sites; restore in ``finally``.

    Unselected sites keep their processor object untouched. Yields the list of controlled sites.
    """
    original = dict(unet.attn_processors)
    sites = [s for s in unet_sites(unet) if selector is None or selector(s)]
    chosen = {s.name: s for s in sites}
    new = {
        name: ControlledAttnProcessor(chosen[name], controller, proc) if name in chosen else proc
        for name, proc in original.items()
    }
    handles = []
    unet.set_attn_processor(new)
    try:
        for module, hook in controller.feature_hooks(unet):
            handles.append(module.register_forward_hook(hook))
        yield sites
    finally:
        for h in handles:
            h.remove()
        unet.set_attn_processor(original)
