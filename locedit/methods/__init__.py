"""The editing methods: one module each, one line each in :data:`METHODS`.

The pipeline, the CLI, the bench and ``locedit methods`` read this registry; no method's name is
tested anywhere else.
"""

from .base import INPUTS, Citation, EditRequest, Method, Plan
from .blended import Blended, BlendedOptions
from .diffedit import DiffEdit, DiffEditOptions
from .locinv import LocInv, LocInvEditOptions
from .mag_edit import MAGEdit, MAGEditOptions
from .masactrl import MasaCtrl, MasaCtrlOptions
from .mde_edit import MDEEdit, MDEEditOptions
from .p2p import P2P, P2PEditOptions
from .pnp import PnP, PnPOptions
from .sdedit import SDEdit, SDEditOptions

METHODS: dict[str, type[Method]] = {
    "p2p": P2P,
    "mag-edit": MAGEdit,
    "mde-edit": MDEEdit,
    "locinv": LocInv,
    "masactrl": MasaCtrl,
    "pnp": PnP,
    "blended": Blended,
    "sdedit": SDEdit,
    "diffedit": DiffEdit,
}

__all__ = ["INPUTS", "METHODS", "Blended", "BlendedOptions", "Citation", "DiffEdit", "DiffEditOptions", "EditRequest", "SDEdit", "SDEditOptions", "LocInv", "LocInvEditOptions", "MAGEdit", "MAGEditOptions", "MasaCtrl", "MasaCtrlOptions",
           "MDEEdit", "MDEEditOptions", "Method", "P2P", "P2PEditOptions", "Plan", "PnP", "PnPOptions"]
