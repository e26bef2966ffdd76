"""Attention-map losses (pure functions), the latent-guidance loop, and LocInv's token learning.

The methods built on them (MAG-Edit, MDE-Edit, LocInv) are in :mod:`locedit.methods`.
"""

from . import losses
from .loop import Chain, GuidanceOptions, LatentGuidance, MapCapture

__all__ = ["Chain", "GuidanceOptions", "LatentGuidance", "MapCapture", "losses"]
