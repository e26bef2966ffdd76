"""Progress reporting hook: core loops take ``progress`` (a callable wrapping an iterable, or None).

The CLI passes :func:`tqdm_progress`; library users pass nothing and get silence.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable

Progress = Callable[[Iterable, str], Iterable]


def track(progress: Progress | None, iterable: Iterable, desc: str) -> Iterable:
    return iterable if progress is None else progress(iterable, desc)


def tqdm_progress(iterable: Iterable, desc: str) -> Iterable:
    from tqdm.auto import tqdm

    # disable=None: bars only on a terminal, so logs and pipes stay clean
    return tqdm(iterable, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)
