"""Editors for the flow-matching transformers (FLUX, SD3): issue 33. The registry is
:data:`FLOW_EDITORS` (:mod:`.editors`), the options :mod:`.options`; importing this package loads no
torch. The editors themselves: :func:`.flowedit.flowedit`, :func:`.rfsolver_edit.rf_solver_edit`
(RF-Solver-Edit, FireFlow), :func:`.kvedit.kv_edit`, :func:`.rf_inversion.rf_inversion_edit`,
:func:`.uniedit.uniedit_flow`."""

from .editors import FLOW_EDITORS
from .options import (FLOWEDIT_DEFAULTS, FireFlowEditOptions, FlowEditOptions, KVEditOptions, RFInversionOptions,
                      RFSolverEditOptions, UniEditOptions)

__all__ = ["FLOWEDIT_DEFAULTS", "FLOW_EDITORS", "FireFlowEditOptions", "FlowEditOptions", "KVEditOptions",
           "RFInversionOptions", "RFSolverEditOptions", "UniEditOptions"]
