"""The one shape of every registry: methods (:data:`locedit.methods.METHODS`), instruction methods
(:data:`locedit.instruct.INSTRUCT_METHODS`), inversions (:data:`locedit.inversion.INVERSIONS`) and
samplers (:data:`locedit.diffusion.sampler.SAMPLERS`) are classes with these fields, read alike by
the CLI, the bench, the web app and ``locedit methods``. A registry is a dict literal, name ->
entry; adding one is a module with its class and one line in that dict."""

from __future__ import annotations

from typing import ClassVar

from .options import Citation


class Entry:
    """name: the registry key; summary: one line for help texts; Options: the frozen options dataclass
    (None: no options); papers: where it comes from; uses: the inputs it reads (names of
    :data:`locedit.methods.base.INPUTS`); built_on: the names of the entries it builds on, whose papers
    are theirs (MAG-Edit on p2p), not repeated here."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type | None] = None
    papers: ClassVar[tuple[Citation, ...]] = ()
    uses: ClassVar[frozenset[str]] = frozenset()
    built_on: ClassVar[tuple[str, ...]] = ()  # entries of the same registry it builds on (cited there)
