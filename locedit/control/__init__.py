"""Attention controllers of the Prompt-to-Prompt family."""

from .alignment import align, refine_mapping, replace_mapping
from .p2p import P2P_MODES, P2POptions, Prompt2Prompt, check_blend_words

# engine name -> (options class, controller class); the CLI's --engine choices come from here
ENGINES = {"p2p": (P2POptions, Prompt2Prompt)}

__all__ = ["ENGINES", "P2P_MODES", "P2POptions", "Prompt2Prompt", "align", "check_blend_words", "refine_mapping", "replace_mapping"]
