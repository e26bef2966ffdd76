"""Editors for the flow-matching transformers (FLUX, SD3): issue 33. FlowEdit so far."""

from .flowedit import FLOWEDIT_DEFAULTS, FlowEditOptions, flowedit

__all__ = ["FLOWEDIT_DEFAULTS", "FlowEditOptions", "flowedit"]
