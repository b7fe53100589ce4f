"""Stage timers: wall-clock seconds per named stage (no effect on results).

The pipeline calls ``ctx.timer("stage")`` around its stages; the default :data:`NULL_TIMER`
records nothing, the benchmark passes a :class:`StageTimer`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class StageTimer:
    """Accumulates wall-clock seconds per stage name (nested stages are counted in both).

    Example:
        >>> t = StageTimer()
        >>> with t("decode"):
        ...     pass
        >>> sorted(t.seconds)
        ['decode']
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage``."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.calls[stage] = self.calls.get(stage, 0) + 1

    def total(self) -> float:
        """Return the sum over stages (seconds)."""
        return sum(self.seconds.values())


class _NullTimer(StageTimer):
    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        yield

    def add(self, stage: str, seconds: float) -> None:
        return None


#: a timer that records nothing (the default of :class:`absclip.methods.batch.BatchContext`)
NULL_TIMER: StageTimer = _NullTimer()
