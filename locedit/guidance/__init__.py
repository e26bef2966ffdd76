"""Attention-map losses (pure functions), the latent-guidance loop, and LocInv's token learning
(imported on first use). The methods built on them (MAG-Edit, MDE-Edit, LocInv) are in
:mod:`locedit.methods`."""

from .._lazy import lazy_attributes
from .options import GuidanceOptions, LocInvOptions

__getattr__ = lazy_attributes(__name__, {
    "losses": ".losses", "Chain": ".loop", "LatentGuidance": ".loop", "MapCapture": ".loop",
})

__all__ = ["Chain", "GuidanceOptions", "LatentGuidance", "LocInvOptions", "MapCapture", "losses"]
