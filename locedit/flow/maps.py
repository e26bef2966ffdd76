"""Word maps from FLUX's joint attention (issue 33, item 2, FLUX's part).

In a FLUX block the text and image tokens attend in one softmax (double-stream blocks concatenate
the two streams' queries, keys and values; single-stream blocks carry them concatenated, text
first). A word's map is the image queries' attention to that word's text tokens inside that joint
softmax, averaged over heads and over the blocks of one model call: (h/2, w/2) on the packed latent
grid. :class:`MapProcessor` is diffusers' own ``FluxAttnProcessor`` (the output is its output, the
same call) that also forms those probabilities from the same queries and keys (projections, RMS
norms, rotary embedding as diffusers' processor applies them) while a :class:`MapStore` is
recording; :func:`recording` installs it on every attention module and restores the model's own
processors in ``finally``.
"""

from __future__ import annotations

import contextlib

import torch


class MapStore:
    """Image-to-text attention summed over the blocks of the calls made while recording."""

    def __init__(self, text_len: int):
        self.text_len = text_len
        self.sum: torch.Tensor | None = None  # (B, image tokens, text tokens)
        self.count = 0

    def add(self, probs: torch.Tensor) -> None:
        p = probs.float().mean(1).detach()  # heads
        self.sum = p if self.sum is None else self.sum + p
        self.count += 1

    def maps(self, positions: list[int], h: int, w: int) -> torch.Tensor:
        """(B, h, w): the attention to ``positions`` (a word's tokens) summed, averaged over blocks."""
        if self.sum is None:
            raise RuntimeError("no attention was recorded")
        return (self.sum[..., positions].sum(-1) / self.count).view(-1, h, w)


def _make_processor(store: MapStore):
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

    class MapProcessor(FluxAttnProcessor):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                     image_rotary_emb=None):
            q, k, _, eq, ek, _ = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
            q, k = attn.norm_q(q.unflatten(-1, (-1, attn.head_dim))), attn.norm_k(k.unflatten(-1, (-1, attn.head_dim)))
            if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
                eq = attn.norm_added_q(eq.unflatten(-1, (-1, attn.head_dim)))
                ek = attn.norm_added_k(ek.unflatten(-1, (-1, attn.head_dim)))
                q, k = torch.cat([eq, q], dim=1), torch.cat([ek, k], dim=1)
            if image_rotary_emb is not None:
                q, k = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1), apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
            t = store.text_len
            scores = torch.einsum("bqhd,bkhd->bhqk", q[:, t:].float(), k.float()) / attn.head_dim ** 0.5
            store.add(scores.softmax(-1)[..., :t])
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    return MapProcessor()


@contextlib.contextmanager
def recording(transformer, text_len: int):
    """Record the joint attention of every block of ``transformer`` (a FluxTransformer2DModel) into a
    :class:`MapStore` for the calls made inside; the model's processors are restored after."""
    store = MapStore(text_len)
    before = transformer.attn_processors
    transformer.set_attn_processor({name: _make_processor(store) for name in before})
    try:
        yield store
    finally:
        transformer.set_attn_processor(before)


def t5_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """The T5 token positions of ``word`` in ``prompt`` (T5 has no start token: counted from 0); the
    word matched as locedit's CLIP positions are (case and surrounding punctuation ignored)."""
    from ..diffusion.text import token_positions

    return [p - 1 for p in token_positions(tokenizer, prompt, word)]
