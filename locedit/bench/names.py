"""The names ``locedit bench --methods`` accepts, read from the registries (light: no torch)."""

from ..flow import FLOW_EDITORS
from ..instruct import INSTRUCT_METHODS
from ..methods import METHODS

INSTRUCT = tuple(INSTRUCT_METHODS)
# every registry method, plus "<name>-mask" for methods that take a user mask as an option: the
# item's mask replaces the attention blend (e.g. p2p-mask = P2P with the edited region's exact mask);
# a method that needs the mask (Blended Latent Diffusion) gets it under its own name
MASK_SUFFIX = "-mask"


def bench_methods() -> tuple[str, ...]:
    """Every name ``--methods`` accepts, read from the registries when asked: the UNet methods, the
    flow editors (``-mask``: inside the item's mask; KV-Edit always is) and the instruction methods."""
    return tuple([name for name in METHODS] + [name + MASK_SUFFIX for name, m in METHODS.items()
                                                    if "mask" in m.uses and "mask" not in m.needs]
                 + list(FLOW_EDITORS) + [name + MASK_SUFFIX for name, e in FLOW_EDITORS.items() if not e.needs_mask]
                 ) + INSTRUCT


def flow_editor(method: str):
    """The flow editor a bench name runs (its registry entry), or None for a UNet or instruction method."""
    name = method[: -len(MASK_SUFFIX)] if method.endswith(MASK_SUFFIX) else method
    return FLOW_EDITORS.get(name)
