"""The flow inversions' registry (issue 33, items 3 and 6): the image latent walked up to noise under a
prompt, by a rectified-flow ODE solver or RF-Inversion's controlled ODE, then sampled back down by
the same rule to show what the noise holds. ``locedit invert --inversion NAME`` on a FLUX or SD3
model, :func:`locedit.api.flow_invert`, ``locedit methods`` and ``bench/flow_inversions.py`` read
it; :mod:`.invert` runs it. Torch-free at import.

The editors run these same solvers inside their own inversions (RF-Solver-Edit, FireFlow and
KV-Edit record features on the way up; UniEdit-Flow inverts part of the way): the value-sharing
editors' ``--solver`` (``locedit edit --method rf-solver-edit``) picks among the ODE ones.
"""

from __future__ import annotations

from typing import ClassVar

from ..registry import Entry
from .options import (EULER_PAPER, FIREFLOW, RFINVERSION_PAPER, RFSOLVER_PAPER, UNIEDIT_PAPER, FlowInversionOptions,
                      RFInvertOptions, UniInvOptions)


class FlowInversion(Entry):
    families: ClassVar[tuple[str, ...]] = ("flux", "sd3")
    solver: ClassVar[str] = ""  # locedit.diffusion.flow.walk's solver; "" for RF-Inversion's controlled ODE
    Options = FlowInversionOptions


class EulerInversion(FlowInversion):
    name, solver = "euler", "euler"
    summary = "Euler inversion: the sampling ODE's first-order step, walked up (one call a step)"
    papers = (EULER_PAPER,)


class RFSolverInversion(FlowInversion):
    name, solver = "rf-solver", "rf-solver"
    summary = "RF-Solver: second-order Taylor step, the derivative from a half step (two calls a step)"
    papers = (RFSOLVER_PAPER,)


class FireFlowInversion(FlowInversion):
    name, solver = "fireflow", "fireflow"
    summary = "FireFlow: midpoint step on the previous step's midpoint velocity (one call a step after the first)"
    papers = (FIREFLOW,)


class UniInversion(FlowInversion):
    name, solver = "uni-inv", "uni-inv"
    summary = "Uni-Inv: predictor-corrector on the previous corrector velocity (one call a step after the first)"
    papers = (UNIEDIT_PAPER,)
    Options = UniInvOptions


class RFInversionInversion(FlowInversion):
    name = "rf-inversion"
    summary = "RF-Inversion: controlled forward ODE pulled by gamma towards one noise draw (FLUX)"
    papers = (RFINVERSION_PAPER,)
    families = ("flux",)
    Options = RFInvertOptions


FLOW_INVERSIONS = {e.name: e for e in (EulerInversion, RFSolverInversion, FireFlowInversion, UniInversion,
                                       RFInversionInversion)}
