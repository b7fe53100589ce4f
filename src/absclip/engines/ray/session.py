"""Ray itself: the lazy ``import ray`` (one sentence naming the extra when missing), connecting
to a cluster or starting a local instance, and unwrapping an :class:`AbsclipError` raised in a Ray worker."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from absclip.errors import AbsclipError

RAY_HINT = "Ray is not installed; install the extra with pip install 'absclip[ray]'."


def import_ray() -> Any:
    """Return the ``ray`` module (with Ray Data loaded); raise :class:`AbsclipError` naming the extra if missing."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise AbsclipError(RAY_HINT) from e
    return ray


def _find_absclip_error(e: BaseException) -> AbsclipError | None:
    """Return the :class:`AbsclipError` behind ``e``, looking through Ray's wrappers (which carry a traceback)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, AbsclipError) and not hasattr(x, "traceback_str"):
            return x
        stack += [x.__cause__, x.__context__, getattr(x, "cause", None)]
    return None


def _unwrapped(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; an :class:`AbsclipError` raised in a Ray worker comes back as itself (one sentence)."""
    try:
        return fn()
    except Exception as e:
        inner = _find_absclip_error(e)
        if inner is e:
            raise
        if inner is not None:
            raise type(inner)(str(inner)) from e
        raise


def _wait_for_executors(timeout: float = 30.0) -> None:
    """Let Ray Data's executor threads of an interrupted run finish before Ray shuts down.

    An executor thread that touches Ray after ``ray.shutdown()`` makes Ray end the whole process
    with exit code 1, which would hide the interrupt (exit 130) the user asked for.
    """
    import threading

    deadline = time.monotonic() + timeout
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.name.startswith("StreamingExecutor"):
            t.join(max(0.0, deadline - time.monotonic()))


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[tuple[Any, bool]]:
    """Yield ``(ray, started)``: Ray connected to a cluster — the one already connected, ``address``
    (``auto``, ``ray://HOST:PORT``), ``$RAY_ADDRESS``, or a new local instance (``started``, shut down on exit).

    SIGTERM is turned into KeyboardInterrupt for the session, as in the local engine: ``ray.init`` installs
    a native handler that dumps a stack trace and aborts the driver, so ours is installed after it.
    """
    from absclip.engines.local import sigterm_as_interrupt

    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
        if address in (None, "local") and not os.environ.get("RAY_ADDRESS"):
            kwargs.update(address=None, include_dashboard=False)
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            raise AbsclipError(f"Could not connect to the Ray cluster at {address} ({str(e).splitlines()[0]}); "
                               "start one with 'ray start --head' or leave out `address`.") from e
        started = True
    try:
        with sigterm_as_interrupt():
            yield ray, started
    finally:
        if started:
            _wait_for_executors()
            ray.shutdown()
