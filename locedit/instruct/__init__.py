"""Instruction editing: the InstructPix2Pix sampling loop and LIME on top of it (imported on first use)."""

from .._lazy import lazy_attributes
from .methods import INSTRUCT_METHODS, InstructResult
from .options import IP2PEditOptions, IP2POptions, LIMEOptions

__getattr__ = lazy_attributes(__name__, {
    "IP2P_LAYOUT": ".ip2p", "instruct_edit": ".ip2p", "LIMEResult": ".lime", "content_tokens": ".lime",
    "lime_edit": ".lime", "stop_words": ".lime",
})

__all__ = ["INSTRUCT_METHODS", "IP2P_LAYOUT", "IP2PEditOptions", "IP2POptions", "InstructResult", "LIMEOptions",
           "LIMEResult", "content_tokens", "instruct_edit", "lime_edit", "stop_words"]
