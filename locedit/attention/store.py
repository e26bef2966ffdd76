"""Keeps only the attention maps a method asks for.

A request names a batch row and the token positions to keep; the store averages the
probabilities over heads and selected sites (and, when accumulating, sums over steps), so memory
is (tokens x pixels) per request instead of every layer's full (heads x pixels x 77) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sites import Site


@dataclass(frozen=True)
class MapRequest:
    row: int  # batch row
    tokens: tuple[int, ...]  # token positions in that row's prompt


class TokenMapStore:
    """Accumulates cross-attention maps (T, side, side) per request, detached, summed over steps
    until :meth:`reset` (guidance losses that need gradients use :class:`locedit.guidance.MapCapture`)."""

    def __init__(self, requests: dict[str, MapRequest]):
        self.requests = dict(requests)
        self.reset()

    def reset(self) -> None:
        self._sum: dict[str, torch.Tensor] = {}
        self._layers = 0  # layer evaluations added in the current step
        self._steps: list[int] = []  # layer counts of finished steps

    def start_step(self) -> None:
        if self._layers:
            self._steps.append(self._layers)
        self._layers = 0

    def add(self, probs: torch.Tensor, site: Site) -> None:
        """``probs`` (B, H, Q, K) from one cross-attention site."""
        probs = probs.detach()
        side = int(round(probs.shape[2] ** 0.5))
        for key, req in self.requests.items():
            m = probs[req.row, :, :, list(req.tokens)].mean(0)  # (Q, T)
            m = m.transpose(0, 1).reshape(len(req.tokens), side, side).float()
            self._sum[key] = m if key not in self._sum else self._sum[key] + m
        self._layers += 1

    def maps(self, key: str) -> torch.Tensor:
        """(T, side, side): mean over heads and layers, summed over the accumulated steps."""
        if key not in self._sum:
            raise KeyError(f"no maps recorded for {key!r}")
        per_step = max(self._steps + [self._layers]) or 1
        return self._sum[key] / per_step
