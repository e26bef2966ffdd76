"""Attention sites: where an attention layer sits in the UNet, parsed from its processor name.

diffusers names processors like ``up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor``:
``attn1`` is self-attention, ``attn2`` cross-attention. A site's *level* is how many times the
latent has been halved where it runs: down block i runs at level i, the mid block at the deepest
level, up block j at level (n_blocks - 1 - j). On SD 1.x (64x64 latents, 4 blocks) level 2 is the
16x16 resolution the editing papers call "16x16 maps".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(
    r"^(?P<place>down_blocks|mid_block|up_blocks)(?:\.(?P<block>\d+))?\.attentions\.(?P<attn>\d+)"
    r"\.transformer_blocks\.(?P<tb>\d+)\.attn(?P<kind>[12])\.processor$"
)


@dataclass(frozen=True)
class Site:
    name: str  # the processor name
    kind: str  # "self" | "cross"
    place: str  # "down" | "mid" | "up"
    block: int  # index of the down/up block (0 for mid)
    level: int  # latent halvings at this site: map side = latent side // 2**level

    def map_side(self, latent_side: int) -> int:
        return latent_side // 2**self.level


def parse_site(name: str, num_blocks: int) -> Site | None:
    """Site for a processor name, or None for processors outside transformer blocks."""
    m = _NAME.match(name)
    if m is None:
        return None
    place = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}[m["place"]]
    block = int(m["block"] or 0)
    level = {"down": block, "mid": num_blocks - 1, "up": num_blocks - 1 - block}[place]
    return Site(name, "self" if m["kind"] == "1" else "cross", place, block, level)


def unet_sites(unet) -> list[Site]:
    """Every attention site of a diffusers UNet, in processor order."""
    n = len(unet.config.block_out_channels)
    return [s for s in (parse_site(k, n) for k in unet.attn_processors) if s is not None]


@dataclass(frozen=True)
class SiteSelector:
    """Selects sites by kind, place and level; ``None`` means any."""

    kinds: frozenset[str] | None = None
    places: frozenset[str] | None = None
    levels: frozenset[int] | None = None
    min_level: int = 0

    def __call__(self, site: Site) -> bool:
        return (
            (self.kinds is None or site.kind in self.kinds)
            and (self.places is None or site.place in self.places)
            and (self.levels is None or site.level in self.levels)
            and site.level >= self.min_level
        )

    def __or__(self, other: "SiteSelector") -> "AnySelector":
        return AnySelector((self, other))


@dataclass(frozen=True)
class AnySelector:
    parts: tuple

    def __call__(self, site: Site) -> bool:
        return any(p(site) for p in self.parts)


def map_level(sites: list[Site], preferred: int = 2) -> int:
    """The level whose cross-attention maps the editing methods average ("16x16 maps" on SD).

    ``preferred`` (2: latent/4, SD's 16x16) when the model has cross-attention there, otherwise the
    deepest level that has it, so tiny models with fewer blocks still get maps. Only the down and up
    blocks count: the methods average their maps, never the mid block's (a UNet whose mid block is
    the only cross-attention at some level - the shapes v2 UNet's attention-free 4x4 level - would
    otherwise get a level with no map to average).
    """
    levels = sorted({s.level for s in sites if s.kind == "cross" and s.place != "mid"})
    if not levels:
        raise ValueError("the UNet has no cross-attention sites")
    return preferred if preferred in levels else levels[-1]


def cross_maps_selector(sites: list[Site], preferred: int = 2) -> SiteSelector:
    """Cross-attention sites at :func:`map_level` (on SD: the five 16x16 layers, down and up)."""
    return SiteSelector(kinds=frozenset({"cross"}), places=frozenset({"down", "up"}), levels=frozenset({map_level(sites, preferred)}))
