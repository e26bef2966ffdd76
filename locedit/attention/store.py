"""Keeps only the attention maps a method asks for.

A request names a batch row by its (branch, condition), resolved through the controller's layout at
each call (the loop may leave out rows nobody needs), and the token positions to keep; the store averages the
probabilities over heads and selected sites (and, when accumulating, sums over steps), so memory
is (tokens x pixels) per request instead of every layer's full (heads x pixels x 77) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sites import Site


@dataclass(frozen=True)
class MapRequest:
    branch: str  # the batch row's branch ("source", "target", ...)
    tokens: tuple[int, ...]  # token positions in that row's prompt
    cond: str = "cond"  # and its condition


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

    def add(self, probs: torch.Tensor, site: Site, layout) -> None:
        """``probs`` (B, H, Q, K) from one cross-attention site, rows as ``layout`` (a
        :class:`locedit.attention.BatchLayout`) says."""
        probs = probs.detach()
        side = int(round(probs.shape[2] ** 0.5))
        for key, req in self.requests.items():
            row = layout.index(req.branch, req.cond)
            if row is None:
                raise RuntimeError(f"map request {key!r}: no ({req.branch}, {req.cond}) row in the batch")
            m = probs[row, :, :, list(req.tokens)].mean(0)  # (Q, T)
            m = m.transpose(0, 1).reshape(len(req.tokens), side, side).float()
            self._sum[key] = m if key not in self._sum else self._sum[key] + m
        self._layers += 1

    @property
    def recorded(self) -> bool:
        """Whether any map has been added since the last :meth:`reset`."""
        return bool(self._sum)

    def maps(self, key: str) -> torch.Tensor:
        """(T, side, side): mean over heads and layers, summed over the accumulated steps."""
        if key not in self._sum:
            raise KeyError(f"no maps recorded for {key!r}")
        per_step = max(self._steps + [self._layers]) or 1
        return self._sum[key] / per_step
