"""Lazy package attributes (PEP 562): a package's heavy names (anything that imports torch) are
imported on first use, so that ``locedit --help`` and the registries stay light."""

from __future__ import annotations

import importlib
import sys


def lazy_attributes(package: str, names: dict[str, str]):
    """A module ``__getattr__`` for ``package``: ``names`` maps an attribute to the submodule
    (relative, e.g. ".p2p") that defines it, or to itself (``"losses": ".losses"``) for a submodule."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(names[name], package)
        value = module if names[name] == "." + name else getattr(module, name)  # a submodule itself
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
