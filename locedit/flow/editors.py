"""The flow editors' registry (issue 33, item 6): one entry per editor, the registries' one shape
(:class:`locedit.registry.Entry`) plus what a flow editor declares - the model families it runs on,
whether it needs a mask, the rule that takes a user's mask to the latent grid, and ``run``.

``locedit edit --method NAME`` (and ``locedit flow``, alias ``locedit flowedit``), ``locedit methods`` and the FLUX peers'
side-by-side runs (``bench/peers/flux_run.py``) read it; a new editor is a module and one line in
:data:`FLOW_EDITORS`. Torch-free at import (the command line refuses bad flags from it before
torch loads): each ``run`` imports its editor's module.
"""

from __future__ import annotations

import importlib
from typing import ClassVar

from ..registry import Entry
from .options import (FIREFLOW, FLOWEDIT_PAPER, KVEDIT_PAPER, RFINVERSION_PAPER, RFSOLVER_PAPER, UNIEDIT_PAPER,
                      FireFlowEditOptions, FlowEditOptions, KVEditOptions, RFInversionOptions, RFSolverEditOptions,
                      UniEditOptions)


def _load(ref: str):
    """``"module:name"`` under :mod:`locedit.flow`, imported on first use (the registry stays torch-free)."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


def refuse_inert_guidance(options, defaults, bundle) -> None:
    """Refuse, in one line, each guidance field of ``options`` (a name with "guidance" in it) set away
    from ``defaults`` when ``bundle`` is a FLUX model without the distilled guidance embedding, where no
    guidance scale acts (:attr:`~locedit.diffusion.flow_model.FlowBundle.guidance_inert`): no setting
    is accepted and then ignored. The defaults pass (they are the methods' own, and act on FLUX.1-dev)."""
    from dataclasses import fields

    from ..errors import LoceditError

    if not getattr(bundle, "guidance_inert", False):
        return
    inert = [f"--{f.metadata.get('flag', f.name.replace('_', '-'))} {getattr(options, f.name):g}"
             for f in fields(options) if "guidance" in f.name
             and getattr(options, f.name) is not None and getattr(options, f.name) != getattr(defaults, f.name)]
    if inert:
        raise LoceditError(f"{' and '.join(inert)}: {bundle.name!r} has no distilled guidance (a FLUX transformer "
                           "without the guidance embedding), so no guidance scale acts on it; leave it unset")


class FlowEditor(Entry):
    families: ClassVar[tuple[str, ...]] = ("flux",)
    needs_mask: ClassVar[bool] = False  # the editor is defined by a mask (KV-Edit)
    function: ClassVar[str] = ""  # "module:name" of the editor's function, called by run

    @staticmethod
    def latent_mask(mask, h: int, w: int):
        """A (1, 1, H, W) user mask on the (h, w) latent grid: the area average above one half (locedit's
        rule for the editors whose code has no mask)."""
        import torch.nn.functional as F

        return (F.interpolate(mask.float(), size=(h, w), mode="area") > 0.5).float()

    @staticmethod
    def resolve(options, family: str):
        """The options as run on ``family`` (FlowEdit fills its per-family defaults)."""
        return options

    @classmethod
    def run(cls, bundle, x, source, target, options, seed=0, progress=None, mask=None):
        """The edited latent: the editor's function on (bundle, x, source, target, options, seed,
        progress, mask)."""
        return _load(cls.function)(bundle, x, source, target, options, seed, progress, mask)


class FlowEdit(FlowEditor):
    name = "flowedit"
    summary = "FlowEdit: inversion-free ODE from the image to the target prompt (SD3, FLUX)"
    Options = FlowEditOptions
    papers = (FLOWEDIT_PAPER,)
    families = ("sd3", "flux")
    function = "flowedit:flowedit"

    @staticmethod
    def resolve(options, family: str):
        return options.resolved(family)


class RFSolverEdit(FlowEditor):
    name = "rf-solver-edit"
    summary = "RF-Solver-Edit: second-order inversion and sampling, values of the last single blocks shared"
    Options = RFSolverEditOptions
    papers = (RFSOLVER_PAPER,)
    function = "rfsolver_edit:rf_solver_edit"


class FireFlowEdit(RFSolverEdit):
    name = "fireflow-edit"
    summary = "FireFlow: RF-Solver-Edit's value sharing on FireFlow's one-call midpoint solver"
    Options = FireFlowEditOptions
    papers = (FIREFLOW,)
    built_on = ("rf-solver-edit",)


class KVEdit(FlowEditor):
    name = "kv-edit"
    summary = "KV-Edit: the background's keys and values cached by the inversion, the foreground regenerated"
    Options = KVEditOptions
    papers = (KVEDIT_PAPER,)
    needs_mask = True
    function = "kvedit:kv_edit"

    @staticmethod
    def latent_mask(mask, h: int, w: int):
        """The code's rule (:func:`locedit.flow.kvedit.latent_mask`): bilinear, every value above 0."""
        return _load("kvedit:latent_mask")(mask, h, w)


class RFInversion(FlowEditor):
    name = "rf-inversion"
    summary = "RF-Inversion: controlled forward ODE (gamma) to noise, controlled reverse ODE (eta) to the target"
    Options = RFInversionOptions
    papers = (RFINVERSION_PAPER,)
    function = "rf_inversion:rf_inversion_edit"


class UniEditFlow(FlowEditor):
    name = "uniedit-flow"
    summary = "UniEdit-Flow: delayed Uni-Inv, then velocity fusion guided by the target-source difference"
    Options = UniEditOptions
    papers = (UNIEDIT_PAPER,)
    function = "uniedit:uniedit_flow"


FLOW_EDITORS = {e.name: e for e in (FlowEdit, RFSolverEdit, FireFlowEdit, KVEdit, RFInversion, UniEditFlow)}
