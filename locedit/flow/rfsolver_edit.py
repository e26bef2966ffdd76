"""RF-Solver-Edit (Wang et al., "Taming Rectified Flow for Inversion and Editing", ICML 2025): invert
the image with the source prompt by RF-Solver's second-order step (Eq. 8), sample the target prompt
from the inverted noise with the same solver, and share the self-attention *values* of the last
single-stream blocks from the inversion into the first ``inject`` sampling steps (the paper's
feature sharing, Sec. 4.2).

Read from the authors' code (wangjiangshan0725/RF-Solver-Edit, ``FLUX_Image_Edit/src``:
``flux/sampling.py`` ``denoise``, ``flux/modules/layers.py`` ``SingleStreamBlock``, ``edit.py``):

- inversion at distilled guidance 1 with the source prompt, sampling at ``guidance`` with the target;
- the values V of single-stream blocks with index > 19 (``single_from`` 20 here: 18 of FLUX.1's 38
  blocks) - all of V, text tokens and image tokens - are stored during the inversion steps that pair
  with the first ``inject`` sampling steps and replace the sampling's V there, at both the step's
  first call and its midpoint call;
- pairing: a sampling step from t_k to t_{k+1} takes the values the inversion computed on its step
  from t_{k+1} up to t_k (keyed by t_k in the code): the first call's values come from the model
  evaluated at t_{k+1} (the step's other end), the midpoint's from the same midpoint level;
- defaults of ``edit.py``: 25 steps, inject 20, guidance 5 (its README suggests 30 steps, guidance 2,
  inject 2-8 for real photos). The paper's text is not at hand here, so only the code's reading is
  offered (``docs/conformance.md``).

``solver``: "rf-solver" is the method; "euler" and "fireflow" (FireFlow's reused midpoint) run the
same value sharing on another solver - locedit's combinations, not FireFlow's own editing code.
``mask`` (1, 1, h, w): locedit's localisation, in neither paper nor code - after every sampling step
the latent outside the mask is put back on the inversion's latent of the same level, so the edit
ends on the source latent there.
"""

from __future__ import annotations

import torch

from ..diffusion import flow
from ..errors import LoceditError
from .attention import JointControl, controlled
from .options import RFSolverEditOptions




class ValueSharing(JointControl):
    """Stores V of the chosen single-stream blocks while ``recording`` and puts it back while
    ``sharing``, keyed by the clock (sampling step, stage) and the block."""

    def __init__(self, text_len: int, blocks: range, steps: set[int]):
        super().__init__(text_len)
        self.blocks, self.steps = blocks, steps
        self.mode = "off"
        self.values: dict = {}

    def attend(self, site, q, k, v, rotary, mask):
        if self.mode != "off" and site.kind == "single" and site.index in self.blocks and self.clock[0] in self.steps:
            key = (self.clock, site.index)
            if self.mode == "record":
                self.values[key] = v.detach().to("cpu")  # as the code: CPU RAM (GBs at 1024 px)
            elif key in self.values:  # FireFlow's first sampling call has no inversion twin (its guard, kept)
                v = self.values[key].to(v)
        return q, k, v, rotary, rotary, mask


@torch.no_grad()
def rf_solver_edit(bundle, x_src: torch.Tensor, source: str, target: str,
                   options: RFSolverEditOptions = RFSolverEditOptions(), seed: int = 0, progress=None,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """The edited latent (1, C, h, w) of ``x_src`` from ``source`` to ``target`` on a FLUX model
    (RF-Solver-Edit with :class:`RFSolverEditOptions`, FireFlow's editing with
    :class:`FireFlowEditOptions`)."""
    from ..progress import track

    if bundle.family != "flux":
        raise LoceditError(f"rf-solver-edit runs on FLUX models (its blocks are FLUX's), not {bundle.family}")
    o = options
    _, _, h, w = x_src.shape
    levels = bundle.sigmas(o.steps, h, w).tolist()
    src, tar = bundle.encode_text([source]), bundle.encode_text([target])
    last = o.single_to if o.single_to is not None else len(bundle.transformer.single_transformer_blocks) - 1
    control = ValueSharing(src.states.shape[1], range(o.single_from, last + 1), set(range(o.inject)))
    x = x_src.to(bundle.device, bundle.dtype)
    n = o.steps
    path = {n: x}  # the inversion's latents by level index (sampling's k: level t_k)
    ticks = iter(track(progress, range(2 * n), "rf-solver-edit"))

    def tick(_i):
        next(ticks, None)

    with controlled(bundle.transformer, control):
        def clock_up(i, stage):  # inversion step i goes from level n-i to n-i-1: sampling step n-1-i
            control.clock = (n - 1 - i, stage)

        def keep_up(i, z):
            path[n - 1 - i] = z
            tick(i)
            return z

        control.mode = "record"
        z, _ = flow.walk(lambda z, t: bundle.velocity(z, t, src, 1.0), x, levels[::-1], o.solver,
                         clock=clock_up, after_step=keep_up)

        def clock_down(i, stage):
            control.clock = (i, stage)

        def blend(i, z):
            tick(i)
            if mask is None:
                return z
            m = mask.to(z)
            return path[i + 1] + m * (z - path[i + 1])

        control.mode = "share"
        z, _ = flow.walk(lambda z, t: bundle.velocity(z, t, tar, o.guidance), z, levels, o.solver,
                         clock=clock_down, after_step=blend)
    return z
