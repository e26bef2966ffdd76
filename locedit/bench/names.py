"""The names ``locedit bench --methods`` accepts, read from the registries (light: no torch)."""

from ..instruct import INSTRUCT_METHODS
from ..methods import METHODS

INSTRUCT = tuple(INSTRUCT_METHODS)
# every registry method, plus "<name>-mask" for methods that take a user mask as an option: the
# item's mask replaces the attention blend (e.g. p2p-mask = P2P with the edited region's exact mask);
# a method that needs the mask (Blended Latent Diffusion) gets it under its own name
MASK_SUFFIX = "-mask"


def bench_methods() -> tuple[str, ...]:
    """Every name ``--methods`` accepts, read from the registries when asked."""
    return tuple([name for name in METHODS] + [name + MASK_SUFFIX for name, m in METHODS.items()
                                                    if "mask" in m.uses and "mask" not in m.needs]
                 ) + INSTRUCT
