"""Stage timers and process memory for the benchmark (no effect on results).

:class:`StageTimer` accumulates wall-clock seconds per named stage; the pipeline calls
``ctx.timer("stage")`` around its stages, and the default :data:`NULL_TIMER` does nothing."""

from __future__ import annotations

import contextlib
import resource
import sys
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


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def release_free_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``), so RSS reflects live data; no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the process's peak-RSS counter (Linux ``/proc/self/clear_refs``); return whether it worked.

    Freed heap memory is returned to the OS first (:func:`release_free_memory`), so the new peak
    starts from the memory actually in use.
    """
    release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Return the peak resident set size of this process in MiB (since start or the last reset)."""
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS, and never resets
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = r // 1024 if sys.platform == "darwin" else r
    return kib / 1024


def rss_mb() -> float:
    """Return the current resident set size in MiB (0 where unknown)."""
    kib = _status_kib("VmRSS")
    return (kib or 0) / 1024
