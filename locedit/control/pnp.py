"""Plug-and-Play feature and self-attention injection (Tumanyan et al., CVPR 2023, Sec. 3-4;
MichalGeyer/pnp-diffusers, ``pnp.py`` and ``pnp_utils.py``).

The batch carries a source row - the inversion's latent at the current step, on the empty
prompt, without guidance - beside the target's CFG rows. For the first ``feature_steps`` steps the
target rows take the source row's output of one decoder residual block's residual branch (in SD
``up_blocks.1.resnets.1``: its ``conv2`` output, before the skip connection is added, as the code's
``conv_forward``); for the first ``attention_steps`` steps the target rows' self-attention takes
the source row's queries and keys (values stay the target's) in every decoder self-attention
layer but the first in forward order (the code's ``res_dict``: on SD, up_blocks.1 attentions 1-2 and
every attention of up_blocks.2 and 3). Both target rows, unconditional and conditional, take the
same source row.

The feature injection is a PyTorch forward hook on that ``conv2`` (no forward is replaced); the
attention injection is the processor's ``edit_qkv``. Differences from the authors' code: the
steps are counted by the step clock (the code tests ``t in timesteps[:k]``, the same steps).
"""

from __future__ import annotations

import torch

from ..attention import AttentionController, BatchLayout, Site, StepClock


def injected_self_sites(order: dict[str, int], sites: list[Site]) -> frozenset[str]:
    """Every decoder self-attention site but the first in forward order (``order``: site name ->
    transformer-block index, :func:`locedit.control.masactrl.block_order`)."""
    decoder = sorted((order[s.name], s.name) for s in sites if s.kind == "self" and s.place == "up")
    return frozenset(name for _, name in decoder[1:])


class PlugAndPlay(AttentionController):
    """Feature and query/key injection from the source row into both target rows (module docstring)."""

    reads = frozenset({("source", "cond")})
    writes = frozenset({("target", "uncond"), ("target", "cond")})

    def __init__(self, feature_steps: int, attention_steps: int, num_steps: int, self_sites: frozenset[str],
                 feature_module: str, clock: StepClock | None = None):
        super().__init__(clock or StepClock(num_steps=num_steps),
                         BatchLayout((("target", "uncond"), ("source", "cond"), ("target", "cond"))))
        self.feature_steps = feature_steps
        self.attention_steps = attention_steps
        self.self_sites = self_sites
        self.feature_module = feature_module

    def _rows(self) -> tuple[int, list[int]]:
        src = self.layout.index("source", "cond")
        tgt = [i for i in (self.layout.index("target", "uncond"), self.layout.index("target", "cond")) if i is not None]
        return src, tgt

    def wants(self, site: Site) -> bool:
        return (self.clock.phase == "sample" and self.clock.step < self.attention_steps
                and site.name in self.self_sites)

    def rewrites_qkv(self, site: Site) -> bool:
        return True

    def edit_qkv(self, query, key, value, site):
        src, tgt = self._rows()
        query, key = query.clone(), key.clone()
        for t in tgt:
            query[t], key[t] = query[src], key[src]
        return query, key, value

    def feature_hooks(self, unet):
        module = unet.get_submodule(self.feature_module).conv2

        def inject(mod, args, output):
            if self.clock.phase != "sample" or self.clock.step >= self.feature_steps:
                return None
            src, tgt = self._rows()
            output = output.clone()
            for t in tgt:
                output[t] = output[src]
            return output

        return [(module, inject)]


def has_feature_module(unet, path: str) -> bool:
    """Whether ``path`` names a residual block (with a ``conv2``) of ``unet``."""
    try:
        return isinstance(getattr(unet.get_submodule(path), "conv2", None), torch.nn.Module)
    except AttributeError:
        return False
