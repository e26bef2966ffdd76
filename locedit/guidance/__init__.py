"""Attention-map losses (pure functions), the latent-guidance loop, MAG-Edit and MDE-Edit."""

from . import losses
from .loop import Chain, GuidanceOptions, LatentGuidance, MapCapture
from .methods import MAG_LOSSES, MAGEditOptions, MDEEditOptions, Region, mag_edit, mde_edit

__all__ = ["Chain", "GuidanceOptions", "LatentGuidance", "MAG_LOSSES", "MAGEditOptions", "MDEEditOptions",
           "MapCapture", "Region", "losses", "mag_edit", "mde_edit"]
