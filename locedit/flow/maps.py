"""Word maps from FLUX's and SD3's joint attention, and the ``--blend-words`` mask of the flow editors
(issue 33, items 2 and 4).

In a FLUX or SD3 block the text and image tokens attend in one softmax (:mod:`.attention`). A word's
map is the image queries' attention to that word's text tokens inside that joint softmax (FLUX: its
T5 tokens; SD3: its CLIP tokens, and T5's when the model has its T5 encoder), averaged over heads
and over the blocks of the calls recorded: (h/2, w/2) on the 2x2 patch grid. :class:`WordMaps`
is a :class:`~.attention.JointControl` that changes nothing (the model's output is bitwise its own)
and forms those probabilities from the queries and keys after the rotary embedding, as the
attention does; :func:`recording` installs it and restores the model's processors after.

:func:`blend_words_mask` is locedit's localisation by words for every flow editor (in none of
their papers or codes): P2P's local-blend rule (Hertz et al., appendix: the words' maps max-pooled
with radius 1, normalised by their maximum, thresholded at 0.3, the source word's and the target
word's masks united) applied to maps recorded once, before the edit, on the source latent noised to
a few levels with each prompt - then the editor runs with that mask as with ``--mask``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .attention import JointControl, controlled


class WordMaps(JointControl):
    """Image-to-text attention summed over the blocks of the calls made while installed."""

    def __init__(self, text_len: int):
        super().__init__(text_len)
        self.sum: torch.Tensor | None = None  # (B, image tokens, text tokens)
        self.count = 0

    def attend(self, site, q, k, v, rotary, mask):
        from diffusers.models.embeddings import apply_rotary_emb

        if site.kind == "image":  # SD3.5's image-only self-attention: no text
            return q, k, v, rotary, rotary, mask
        qr, kr = (q, k) if rotary is None else (apply_rotary_emb(q, rotary, sequence_dim=1),
                                                apply_rotary_emb(k, rotary, sequence_dim=1))
        t, n = self.text_len, q.shape[1]
        image, text = (slice(t, n), slice(0, t)) if site.text_first else (slice(0, n - t), slice(n - t, n))
        scores = torch.einsum("bqhd,bkhd->bhqk", qr[:, image].float(), kr.float()) / q.shape[-1] ** 0.5
        p = scores.softmax(-1)[..., text].mean(1).detach()  # heads
        self.sum = p if self.sum is None else self.sum + p
        self.count += 1
        return q, k, v, rotary, rotary, mask

    def maps(self, positions: list[int], h: int, w: int) -> torch.Tensor:
        """(B, h, w): the attention to ``positions`` (a word's tokens) summed, averaged over blocks."""
        if self.sum is None:
            raise RuntimeError("no attention was recorded")
        return (self.sum[..., positions].sum(-1) / self.count).view(-1, h, w)


@contextlib.contextmanager
def recording(transformer, text_len: int):
    """Record the joint attention of every block of ``transformer`` (FLUX's or SD3's) into a
    :class:`WordMaps` for the calls made inside; the model's processors are restored after."""
    with controlled(transformer, WordMaps(text_len)) as store:
        yield store


def t5_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """The T5 token positions of ``word`` in ``prompt`` (T5 has no start token: counted from 0); the
    word matched as locedit's CLIP positions are (case and surrounding punctuation ignored)."""
    from ..diffusion.text import token_positions

    return [p - 1 for p in token_positions(tokenizer, prompt, word)]


def word_positions(bundle, prompt: str, word: str) -> list[int]:
    """A word's positions in the joint sequence's text part: FLUX's T5 tokens; SD3's CLIP tokens (the
    first 77, start token at 0) and, with its T5 encoder, the T5 tokens after them."""
    from ..diffusion.text import token_positions

    pipe = bundle.pipe
    if bundle.family == "flux":
        return t5_positions(pipe.tokenizer_2, prompt, word)
    out = token_positions(pipe.tokenizer, prompt, word)
    if getattr(pipe, "text_encoder_3", None) is not None:
        out += [77 + p for p in t5_positions(pipe.tokenizer_3, prompt, word)]
    return out


BLEND_LEVELS = (0.3, 0.5, 0.7)  # the noise levels the maps are recorded at
BLEND_THRESHOLD = 0.3  # P2P's local blend threshold
BLEND_POOL = 1  # P2P's max-pool radius


@torch.no_grad()
def blend_words_mask(bundle, x: torch.Tensor, pairs: list[tuple[str, str]], seed: int = 0,
                     guidance: float | None = None, threshold: float = BLEND_THRESHOLD,
                     levels: tuple[float, ...] = BLEND_LEVELS) -> torch.Tensor:
    """(1, 1, h, w) binary mask on the latent grid of ``x`` (1, C, h, w): the union over ``pairs``
    ((prompt, word), e.g. the source word in the source prompt and the target word in the target
    prompt) of each word's map, recorded over ``levels`` on the straight path from ``x`` to one noise
    draw (seeded ``seed``) with its prompt, max-pooled, max-normalised and thresholded (P2P's rule)."""
    _, _, h, w = x.shape
    x = x.to(bundle.device, bundle.dtype)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x)
    masks = []
    for prompt, word in pairs:
        positions = word_positions(bundle, prompt, word)
        text = bundle.encode_text([prompt])
        with recording(bundle.transformer, text.states.shape[1]) as store:
            for s in levels:
                bundle.velocity((1 - s) * x + s * noise, s, text, guidance)
        m = store.maps(positions, h // 2, w // 2)[:, None].float()
        m = F.max_pool2d(m, 2 * BLEND_POOL + 1, stride=1, padding=BLEND_POOL)
        m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        masks.append((m > threshold).float())
    mask = torch.stack(masks).amax(0)
    return F.interpolate(mask, size=(h, w), mode="nearest")
