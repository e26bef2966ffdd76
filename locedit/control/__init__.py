"""Attention controllers of the Prompt-to-Prompt family."""

from .alignment import align, refine_mapping, replace_matrix
from .p2p import P2P_MODES, LocalBlendOptions, P2POptions, Prompt2Prompt, check_blend_words, parse_reweight

__all__ = ["LocalBlendOptions", "P2P_MODES", "P2POptions", "Prompt2Prompt", "align", "check_blend_words",
           "parse_reweight", "refine_mapping", "replace_matrix"]
