"""FLUX's joint attention under diffusers' processor API (issue 33, item 2): one processor for the
double- and single-stream blocks, and a control object that may change the queries, keys, values,
rotary embeddings and attention mask of each block before the softmax.

A FLUX block attends over [text tokens, image tokens] in one softmax: double-stream blocks
concatenate the two streams' projections, single-stream blocks carry the sequence concatenated,
text first. SD3's joint blocks attend over [image tokens, text tokens] (image first, no rotary
embedding): :func:`controlled` installs diffusers' ``JointAttnProcessor2_0`` arithmetic there with
the same control call. :class:`JointProcessor` computes what diffusers' ``FluxAttnProcessor`` computes, in the
same order (projections, RMS norms, concatenation, rotary embedding, attention, output
projections), and hands the pre-rotary (B, L, heads, head_dim) queries, keys and values to
``control.attend(site, ...)``, where an editor reads or replaces them: RF-Solver-Edit's value
sharing, KV-Edit's background keys and values. With the base :class:`JointControl` the output is
bitwise the processor's own (tested).

The clock is the editor's: it sets ``control.clock`` (the sampling step a call belongs to, and the
call's stage within the step) before each transformer call; processors never count calls.
:func:`controlled` installs one processor per attention module and restores the model's own in
``finally``.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch


class Site(NamedTuple):
    """An attention module: ``kind`` "double" (FLUX's ``transformer_blocks``), "single" (FLUX's
    ``single_transformer_blocks``), "joint" (SD3's ``transformer_blocks.N.attn``: the image tokens
    *first*, then the text) or "image" (SD3.5's ``attn2``: image tokens only), and its block's index
    within its kind."""

    kind: str
    index: int

    @property
    def text_first(self) -> bool:
        return self.kind in ("double", "single")


def site_of(name: str, family: str = "flux") -> Site:
    """The site of a processor name such as ``single_transformer_blocks.3.attn.processor``."""
    parts = name.split(".")
    if family == "sd3":
        if parts[0] != "transformer_blocks":
            raise ValueError(f"not an SD3 attention site: {name}")
        return Site("image" if parts[2] == "attn2" else "joint", int(parts[1]))
    kind = {"transformer_blocks": "double", "single_transformer_blocks": "single"}.get(parts[0])
    if kind is None:
        raise ValueError(f"not a FLUX attention site: {name}")
    return Site(kind, int(parts[1]))


class JointControl:
    """Passes everything through; editors subclass :meth:`attend`. ``text_len``: the text tokens at
    the start of the joint sequence; ``clock``: set by the editor before each call."""

    def __init__(self, text_len: int):
        self.text_len = text_len
        self.clock = None

    def attend(self, site: Site, q, k, v, rotary, mask):
        """(q, k, v, query rotary, key rotary, attention mask) for the softmax; q, k, v are
        (B, L, heads, head_dim) before the rotary embedding (FLUX: text first; SD3: image first, no
        rotary embedding)."""
        return q, k, v, rotary, rotary, mask


def _make_processor(control: JointControl, site: Site):
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

    class JointProcessor(FluxAttnProcessor):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                     image_rotary_emb=None):
            q, k, v, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
            q, k, v = (x.unflatten(-1, (-1, attn.head_dim)) for x in (q, k, v))
            q, k = attn.norm_q(q), attn.norm_k(k)
            if attn.added_kv_proj_dim is not None:
                eq, ek, ev = (x.unflatten(-1, (-1, attn.head_dim)) for x in (eq, ek, ev))
                eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
                q, k, v = torch.cat([eq, q], dim=1), torch.cat([ek, k], dim=1), torch.cat([ev, v], dim=1)
            q, k, v, rot_q, rot_k, attention_mask = control.attend(site, q, k, v, image_rotary_emb, attention_mask)
            if rot_q is not None:
                q = apply_rotary_emb(q, rot_q, sequence_dim=1)
            if rot_k is not None:
                k = apply_rotary_emb(k, rot_k, sequence_dim=1)
            out = dispatch_attention_fn(q, k, v, attn_mask=attention_mask, backend=self._attention_backend,
                                        parallel_config=self._parallel_config)
            out = out.flatten(2, 3).to(q.dtype)
            if encoder_hidden_states is None:
                return out
            text, image = out.split_with_sizes([encoder_hidden_states.shape[1],
                                                out.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            image = attn.to_out[1](attn.to_out[0](image.contiguous()))
            return image, attn.to_add_out(text.contiguous())

    return JointProcessor()


def _make_sd3_processor(control: JointControl, site: Site):
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    class SD3JointProcessor(JointAttnProcessor2_0):
        """diffusers' ``JointAttnProcessor2_0`` (SD3, SD3.5) with the control between the projections
        and the softmax."""

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
            b, n = hidden_states.shape[0], hidden_states.shape[1]
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
            head_dim = k.shape[-1] // attn.heads
            q, k, v = (x.view(b, -1, attn.heads, head_dim).transpose(1, 2) for x in (q, k, v))
            if attn.norm_q is not None:
                q = attn.norm_q(q)
            if attn.norm_k is not None:
                k = attn.norm_k(k)
            if encoder_hidden_states is not None:
                eq, ek, ev = (f(encoder_hidden_states).view(b, -1, attn.heads, head_dim).transpose(1, 2)
                              for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
                if attn.norm_added_q is not None:
                    eq = attn.norm_added_q(eq)
                if attn.norm_added_k is not None:
                    ek = attn.norm_added_k(ek)
                q, k, v = torch.cat([q, eq], dim=2), torch.cat([k, ek], dim=2), torch.cat([v, ev], dim=2)
            q, k, v, _, _, mask = control.attend(site, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 None, None)
            out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                   v.transpose(1, 2), attn_mask=mask, dropout_p=0.0,
                                                                   is_causal=False)
            out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(q.dtype)
            context = None
            if encoder_hidden_states is not None:
                out, context = out[:, :n], out[:, n:]
                if not attn.context_pre_only:
                    context = attn.to_add_out(context)
            out = attn.to_out[1](attn.to_out[0](out))
            return out if encoder_hidden_states is None else (out, context)

    return SD3JointProcessor()


def family_of_transformer(transformer) -> str:
    return "sd3" if type(transformer).__name__.startswith("SD3") else "flux"


@contextlib.contextmanager
def controlled(transformer, control: JointControl):
    """Every attention module of ``transformer`` (a ``FluxTransformer2DModel`` or an
    ``SD3Transformer2DModel``) runs through ``control`` inside the block; its own processors are
    restored after, whatever happens."""
    before = transformer.attn_processors
    family = family_of_transformer(transformer)
    make = _make_sd3_processor if family == "sd3" else _make_processor
    transformer.set_attn_processor({name: make(control, site_of(name, family)) for name in before})
    try:
        yield control
    finally:
        transformer.set_attn_processor(before)
