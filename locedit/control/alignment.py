"""Token correspondences between a source and a target prompt (Prompt-to-Prompt, Sec. 3.2).

Both correspondences are matrices over the K token positions (start, words, end, padding):
the target's map at position n becomes ``sum_w source_map[w] * M[w, n]``, blended with the
target's own map by ``alphas[n]`` (1: take the source's, 0: keep the target's). The P2P paper
does not specify either construction; both follow the authors' ``seq_aligner.py``
(google/prompt-to-prompt), with one deviation named in :func:`replace_matrix`.
"""

from __future__ import annotations

import torch

from ..errors import PromptError

# the authors' ScoreParams(gap=0, match=1, mismatch=-1)
GAP, MATCH, MISMATCH = 0, 1, -1


def align(src: list[int], tgt: list[int]) -> list[int]:
    """Global alignment of two token sequences, as the authors' ``global_align`` and
    ``get_aligned_sequences``: scores match 1, mismatch -1, gap 0; each cell takes the best of
    left (a target token against a gap), up (a source token against a gap) and diagonal, and ties
    prefer left, then up, then diagonal. Returns, for every target index, the source index it is
    aligned to, or -1 for a target token aligned to a gap (a new token).

    With gap 0 and mismatch -1, a diagonal move is taken only for equal tokens strictly better
    than both gaps, so every aligned pair is a match; of repeated words, the first is matched
    ('a red circle' -> 'a red red circle' treats the second 'red' as new).
    """
    n, m = len(src), len(tgt)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    trace = [[0] * (m + 1) for _ in range(n + 1)]  # 1 left, 2 up, 3 diagonal
    for j in range(1, m + 1):
        score[0][j], trace[0][j] = j * GAP, 1
    for i in range(1, n + 1):
        score[i][0], trace[i][0] = i * GAP, 2
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left = score[i][j - 1] + GAP
            up = score[i - 1][j] + GAP
            diag = score[i - 1][j - 1] + (MATCH if src[i - 1] == tgt[j - 1] else MISMATCH)
            best = max(left, up, diag)
            score[i][j] = best
            trace[i][j] = 1 if best == left else (2 if best == up else 3)
    out = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        move = trace[i][j]
        if move == 3:
            i, j = i - 1, j - 1
            out[j] = i
        elif move == 1:
            j -= 1
        else:
            i -= 1
    return out


def refine_mapping(src_ids: list[int], tgt_ids: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Refinement (P2P "prompt refinement"): aligned tokens take the source map, new tokens keep
    their own. ``src_ids`` / ``tgt_ids``: token ids with start and end tokens, unpadded.

    Returns (M (length, length) one-hot columns, alphas (length,)). Padding position t >= the
    target's length takes source position t (the authors' ``get_mapper``), whatever the source
    has there.
    """
    mapper = torch.arange(length)
    alphas = torch.ones(length)
    for t, s in enumerate(align(src_ids, tgt_ids)):
        if s < 0:
            alphas[t] = 0.0
        else:
            mapper[t] = s
    return _one_hot_columns(mapper, length), alphas


def replace_matrix(tokenizer, source: str, target: str, length: int) -> torch.Tensor:
    """Word swap (P2P "word swap"), word by word as the authors' ``get_replacement_mapper_``.

    The prompts must have the same number of words (else :class:`PromptError`: use refine). A word
    pair with equal token counts maps token by token; otherwise every target token of the word
    takes ``1 / (its token count)`` of each source token's map (a three-token target word gets a
    third of the source word's map per token). Start and end tokens map to each other and padding
    position t to source position t.

    Deviation: after the last differing word the authors' loop maps target position j to source
    position j (``mapper[j, j]``), which shifts every following word by the token-count
    difference of the swapped words; we keep the words aligned up to the end token. When the
    swapped words have equal token counts (the usual case) the two are identical.
    """
    from ..diffusion.text import swap_words

    src_words, tgt_words = swap_words(tokenizer, source, target)
    m = torch.zeros(length, length)
    m[0, 0] = 1.0
    for (sw, s_pos), (tw, t_pos) in zip(src_words, tgt_words):
        if len(s_pos) == len(t_pos):
            m[s_pos, t_pos] = 1.0
        else:
            for t in t_pos:
                m[s_pos, t] = 1.0 / len(t_pos)
    s_end = src_words[-1][1][-1] + 1 if src_words else 1
    t_end = tgt_words[-1][1][-1] + 1 if tgt_words else 1
    if max(s_end, t_end) >= length:
        raise PromptError(f"prompt is over this model's limit of {length - 2} tokens")
    m[s_end, t_end] = 1.0
    for t in range(t_end + 1, length):
        m[t, t] = 1.0
    return m


def _one_hot_columns(mapper: torch.Tensor, length: int) -> torch.Tensor:
    """M with M[mapper[n], n] = 1: ``src @ M`` gathers ``src[..., mapper]``."""
    m = torch.zeros(length, length)
    m[mapper, torch.arange(length)] = 1.0
    return m
