"""Process memory for the benchmark: peak and current resident set size (no effect on results).

The stage timer the pipeline reports to is :mod:`absclip.core.timer`."""

from __future__ import annotations

import resource
import sys


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
