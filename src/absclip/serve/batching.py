"""Micro-batching of concurrent requests in one process: an asyncio queue drained by one worker task.

The worker takes the first waiting job, waits up to ``max_wait_s`` for more (up to ``max_batch``),
and runs the batch on its one model thread; jobs that arrive meanwhile form the next batch, so under
load batches fill without waiting. The event loop stays free to accept and decode requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class MicroBatcher:
    """Collect jobs from concurrent coroutines into batches for ``run_batch`` (one batch at a time).

    Args:
        run_batch: returns one result per job; a result that is an exception is raised to that job's caller.
        max_batch: most jobs per batch.
        max_wait_s: how long the first job of a batch waits for company.
    """

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], *, max_batch: int,
                 max_wait_s: float = 0.005) -> None:
        self.run_batch = run_batch
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="absclip-model")  # the one model thread
        self.batch_sizes: list[int] = []  # what the worker ran (for tests and the load script's report)
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Stop the worker and the model thread."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, job: Any) -> Any:
        """Return ``job``'s result once its batch has run."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((job, fut))
        return await fut

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the model thread (between batches): work that is not batched, such as pictures."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            live = [(j, f) for j, f in batch if not f.done()]  # a caller that went away is not computed
            if not live:
                continue
            self.batch_sizes.append(len(live))
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [j for j, _ in live])
            except Exception as e:  # noqa: BLE001 - run_batch should not raise; if it does, every caller hears
                results = [e] * len(live)
            for (_, fut), res in zip(live, results):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
