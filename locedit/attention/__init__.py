"""Attention sites, processors, controllers and stores on diffusers' attention-processor API."""

from .control import AttentionController, BatchLayout, Chain, ControlledAttnProcessor, StepClock, controlled_attention
from .sites import Site, SiteSelector, cross_maps_selector, map_level, parse_site, unet_sites
from .store import MapRequest, TokenMapStore

__all__ = [
    "AttentionController",
    "BatchLayout",
    "Chain",
    "ControlledAttnProcessor",
    "MapRequest",
    "Site",
    "SiteSelector",
    "StepClock",
    "TokenMapStore",
    "controlled_attention",
    "cross_maps_selector",
    "map_level",
    "parse_site",
    "unet_sites",
]
