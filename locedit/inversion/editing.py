"""What a trajectory asks of the editing loop, as subscribers to its events (:mod:`locedit.events`).

A :class:`Trajectory` carries data only; this module reads that data and returns the subscribers
that apply it, in the order the loop calls them:

- ``uncond`` "learned" (null-text inversion, LocInv): the unconditional rows take the step's learned
  null embedding (Mokady et al., Alg. 1: the editing run uses the optimised nulls);
- ``uncond`` "source" (negative-prompt inversion): they take the source prompt's embedding
  (Miyake et al., Sec. 3);
- ``token_vectors`` (LocInv): every prompt with a learned word is encoded with that step's vectors
  in place of the word's token embeddings;
- ``source_guidance`` (Noise Map Guidance): the source row is moved before each step
  (:class:`locedit.inversion.nmg.NoiseMapGuidance`);
- ``source_follows`` (direct inversion): the source row is pinned to the inversion latents after
  each step (Ju et al., Alg. 1).
"""

from __future__ import annotations

import torch

from ..events import PinSource, StepState, Subscriber
from .trajectory import Trajectory


class LearnedNulls(Subscriber):
    """The unconditional rows of step i take ``null_embeddings[i]``."""

    def __init__(self, nulls: list[torch.Tensor]):
        self.nulls = nulls

    def before_step(self, state: StepState) -> None:
        state.uncond = self.nulls[state.step].to(state.null)


class SourceAsNull(Subscriber):
    """The unconditional rows take the source prompt's embedding."""

    def before_step(self, state: StepState) -> None:
        state.uncond = state.source


class TokenVectors(Subscriber):
    """(len(prompts), L, D) conditions of step i encoded with the learned token vectors of step i,
    which replace their words' token embeddings in every prompt that has the word."""

    def __init__(self, vectors: dict[str, torch.Tensor], prompts: list[str]):
        self.vectors, self.prompts = vectors, prompts

    def before_step(self, state: StepState) -> None:
        from ..diffusion.text import token_positions
        from ..errors import PromptError

        bundle, out = state.bundle, []
        for p in self.prompts:
            vectors = {}
            for word, vec in self.vectors.items():
                try:
                    positions = token_positions(bundle.tokenizer, p, word)
                except PromptError:
                    continue
                per_step = vec[state.step].to(bundle.device)  # (tokens of the word, D_in)
                for k, pos in enumerate(positions):
                    vectors[pos] = per_step[k % per_step.shape[0]]
            with torch.no_grad():
                out.append(bundle.encode_text_with_tokens(p, vectors) if vectors else bundle.encode_text([p]))
        state.conds = torch.cat(out)


def subscribers(traj: Trajectory, prompts: list[str]) -> tuple[list[Subscriber], list[Subscriber]]:
    """(conditioning subscribers, source-row subscribers) of ``traj`` for an edit of ``prompts``:
    the first set the step's embeddings (``before_step``), the second move or pin the source row;
    the loop places the method's own subscribers between the two."""
    from .nmg import NoiseMapGuidance

    conditioning: list[Subscriber] = []
    if traj.uncond == "learned":
        conditioning.append(LearnedNulls(traj.null_embeddings))
    elif traj.uncond == "source":
        conditioning.append(SourceAsNull())
    if traj.token_vectors:
        conditioning.append(TokenVectors(traj.token_vectors, prompts))
    source: list[Subscriber] = []
    if traj.source_guidance:
        source.append(NoiseMapGuidance(**traj.source_guidance))
    if traj.source_follows:
        source.append(PinSource())
    return conditioning, source
