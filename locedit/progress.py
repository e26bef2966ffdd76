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
    """A bar on a terminal; elsewhere (logs, pipes, CI) a plain line at every tenth of the work."""
    if not sys.stderr.isatty():
        return line_progress(iterable, desc)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def line_progress(iterable: Iterable, desc: str) -> Iterable:
    """Yield from ``iterable``, writing ``desc: k/n (p%, s elapsed)`` to stderr at each tenth."""
    import time

    items = list(iterable) if not hasattr(iterable, "__len__") else iterable
    n = len(items)
    t0 = time.perf_counter()
    marks = {max(1, round(n * k / 10)) for k in range(1, 11)} if n else set()
    for k, item in enumerate(items, start=1):
        yield item
        if k in marks:
            sys.stderr.write(f"{desc}: {k}/{n} ({100 * k // n}%, {time.perf_counter() - t0:.1f} s)\n")
            sys.stderr.flush()
