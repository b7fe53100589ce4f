"""Progress bars for steps that take more than a moment: on stderr, only when it is a terminal and asked for.

Library functions take a ``progress`` flag (default off); the command line turns it on unless
``--no-progress``. Nothing is printed when stderr is not a terminal (logs, pipes, CI)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress_enabled(progress: bool) -> bool:
    """Return whether a bar is shown: asked for, and stderr is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(progress) and bool(isatty and isatty())


def progress_bar(iterable: Iterable[Any] | None = None, progress: bool = True, *, total: int | None = None,
                 desc: str | None = None, unit: str = "it") -> Any:
    """Return a tqdm bar over ``iterable`` (or of ``total`` steps, advanced with ``update``), disabled when
    not :func:`progress_enabled`; it leaves no line behind."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not progress_enabled(progress),
                file=sys.stderr, dynamic_ncols=True, leave=False)
