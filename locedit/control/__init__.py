"""Attention controllers of the Prompt-to-Prompt family (the controllers are imported on first use)."""

from .._lazy import lazy_attributes
from .options import P2P_MODES, LocalBlendOptions, P2POptions, parse_reweight

__getattr__ = lazy_attributes(__name__, {
    "Prompt2Prompt": ".p2p", "check_blend_words": ".p2p",
    "align": ".alignment", "refine_mapping": ".alignment", "replace_matrix": ".alignment",
})

__all__ = ["LocalBlendOptions", "P2P_MODES", "P2POptions", "Prompt2Prompt", "align", "check_blend_words",
           "parse_reweight", "refine_mapping", "replace_matrix"]
