"""Token correspondences between a source and a target prompt (Prompt-to-Prompt, Sec. 3.2).

A correspondence is a pair of (K,) tensors over the target's K token positions:
``mapper[j]`` is the source position whose map the target position j takes, and ``alphas[j]`` is
1 where it takes it and 0 where the target keeps its own map (new words).
"""

from __future__ import annotations

import torch

from ..errors import PromptError


def replace_mapping(src_ids: list[int], tgt_ids: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Word swap: position j takes source position j. The prompts must have equal token counts."""
    if len(src_ids) != len(tgt_ids):
        raise PromptError(
            f"word swap needs prompts of equal token count (source {len(src_ids) - 2}, target {len(tgt_ids) - 2}); "
            "use --p2p refine for prompts that differ in length"
        )
    return torch.arange(length), torch.ones(length)


def align(src: list[int], tgt: list[int], match: int = 1, mismatch: int = -1, gap: int = -1) -> list[tuple[int, int]]:
    """Global (Needleman-Wunsch) alignment; returns (src index, tgt index) pairs of equal tokens."""
    n, m = len(src), len(tgt)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        score[i][0] = i * gap
    for j in range(1, m + 1):
        score[0][j] = j * gap
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = score[i - 1][j - 1] + (match if src[i - 1] == tgt[j - 1] else mismatch)
            score[i][j] = max(diag, score[i - 1][j] + gap, score[i][j - 1] + gap)
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        diag = score[i - 1][j - 1] + (match if src[i - 1] == tgt[j - 1] else mismatch)
        if score[i][j] == diag:
            if src[i - 1] == tgt[j - 1]:
                pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif score[i][j] == score[i - 1][j] + gap:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def refine_mapping(src_ids: list[int], tgt_ids: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Refinement: aligned equal tokens take the source map, new tokens keep their own.

    ``src_ids`` / ``tgt_ids`` include start and end tokens, unpadded; positions past the target's
    end token (padding) map to the source's padding at the same offset from the end token.
    """
    mapper = torch.arange(length)
    alphas = torch.zeros(length)
    for s, t in align(src_ids, tgt_ids):
        mapper[t], alphas[t] = s, 1.0
    shift = len(src_ids) - len(tgt_ids)
    for t in range(len(tgt_ids), length):
        mapper[t] = min(max(t + shift, 0), length - 1)
        alphas[t] = 1.0
    return mapper, alphas
