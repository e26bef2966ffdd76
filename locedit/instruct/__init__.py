"""Instruction editing: the InstructPix2Pix sampling loop and LIME on top of it."""

from .ip2p import IP2P_LAYOUT, IP2POptions, instruct_edit
from .lime import LIMEOptions, LIMEResult, content_tokens, lime_edit, stop_words
from .methods import INSTRUCT_METHODS, IP2PEditOptions, InstructResult

__all__ = ["INSTRUCT_METHODS", "IP2P_LAYOUT", "IP2PEditOptions", "IP2POptions", "InstructResult", "LIMEOptions",
           "LIMEResult", "content_tokens", "instruct_edit", "lime_edit", "stop_words"]
