"""Instruction editing: the InstructPix2Pix sampling loop (LIME builds on it)."""

from .ip2p import IP2POptions, instruct_edit

__all__ = ["IP2POptions", "instruct_edit"]
