"""The sampling loop's per-step events and the state its subscribers see.

The editing loop (:func:`locedit.pipeline.sample`) publishes four events at every step, in this
order, k-diffusion- and diffusers-callback style, and knows no method or inversion:

``before_step``      the step's conditioning is set: ``conds`` (one row per branch) and ``uncond``
                     may be replaced (learned null embeddings, the source prompt as negative,
                     per-step token vectors);
``model_input``      the latents about to enter the model: ``z`` may be moved (latent guidance,
                     Noise Map Guidance's source move) and ``uncond`` replaced;
``after_prediction`` the model's two predictions are in (``pred_u``, ``pred_c``): ``delta``, the
                     guidance difference that classifier-free guidance scales, may be replaced (the
                     proximal threshold);
``after_step``       the step is taken: ``z_next`` may be rewritten (source pinning, local and
                     latent blends, inversion guidance).

A subscriber is any :class:`Subscriber`; it overrides the events it needs and is called in the
order the loop was given. Subscribers come from the trajectory (what its inversion asks of the
editing side: :func:`locedit.inversion.editing.subscribers`), from the method's plan, and from the
sampling options; each lives in its own method's or inversion's module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

EVENTS = ("before_step", "model_input", "after_prediction", "after_step")


@dataclass
class StepState:
    """One sampling step as the subscribers see it. Tensors are float32 on the model's device."""

    bundle: Any
    trajectory: Any
    controller: Any  # the installed AttentionController (a no-op one when the plan has none): clock, layout
    branches: tuple[str, ...]  # the rows of z, an ordered subset of ("source", "target")
    move: Any  # the sampler's Step (locedit.diffusion.sampler): index, timestep, levels from and to
    z: torch.Tensor  # (B, C, h, w) one row per branch
    conds: torch.Tensor  # (B, L, D) conditional embeddings, one row per branch
    uncond: torch.Tensor  # (1, L, D) the unconditional rows' embedding
    null: torch.Tensor  # (1, L, D) the null prompt's embedding
    source: torch.Tensor  # (1, L, D) the source prompt's embedding
    source_pinned: bool = False  # a subscriber pins the source row after the step (moves of it are lost)
    pred_u: torch.Tensor | None = None  # (B, C, h, w) unconditional prediction, per branch (DDIM: eps)
    pred_c: torch.Tensor | None = None  # (B, C, h, w) conditional prediction
    delta: torch.Tensor | None = None  # what CFG scales: pred_c - pred_u unless a subscriber replaced it
    threshold: torch.Tensor | None = None  # the proximal threshold, when one was taken
    z_next: torch.Tensor | None = None  # (B, C, h, w) after the step

    @property
    def step(self) -> int:
        """The sampling step's index, 0 = noisiest."""
        return self.move.index

    @property
    def t(self):
        return self.move.t

    @property
    def has_source(self) -> bool:
        return self.branches[0] == "source"


class Subscriber:
    """Base of the loop's subscribers: every handler a no-op.

    ``pins_source``: after the step the source row is replaced by the trajectory's latent (its
    unconditional prediction is then unused, so the loop may leave that row out of the batch);
    ``reads_every_row``: the subscriber reads the guidance over every row (the proximal threshold's
    quantile), so no row may be left out; ``blend_mask``: the mask the last blend used, reported
    with the result."""

    pins_source: bool = False
    reads_every_row: bool = False
    blend_mask: torch.Tensor | None = None

    def before_step(self, state: StepState) -> None:
        pass

    def model_input(self, state: StepState) -> None:
        pass

    def after_prediction(self, state: StepState) -> None:
        pass

    def after_step(self, state: StepState) -> None:
        pass

    def stats(self) -> dict:
        """Figures reported in the edit's stats (e.g. the guidance loss history)."""
        return {}


def publish(subscribers, event: str, state: StepState) -> None:
    """Call ``event`` on every subscriber, in order."""
    for s in subscribers:
        getattr(s, event)(state)


class PinSource(Subscriber):
    """After step i the source row (row 0) becomes the inversion latent the step lands on, i.e. the
    step's difference is added back (direct inversion, Ju et al., Alg. 1; Plug-and-Play's source row
    reads the inversion's latents at every step, whatever the inversion)."""

    pins_source = True

    def after_step(self, state: StepState) -> None:
        import torch

        if state.has_source:
            target = state.trajectory.target_latent(state.step).to(state.z_next)
            state.z_next = torch.cat([target, state.z_next[1:]])
