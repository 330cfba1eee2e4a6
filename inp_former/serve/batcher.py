"""Dynamic micro-batching: images of concurrent requests share one forward pass.

Requests (on the event loop) put preprocessed images into one bounded queue; one worker thread
takes up to ``max_batch`` of them, waiting at most ``max_wait_s`` after the first for more, and
runs the model once. Under load the queue fills while the model runs, so batches are full and
throughput approaches the model's batch throughput; when idle an image waits ``max_wait_s`` at most.
Inference runs off the event loop, so the server keeps accepting and answering meanwhile.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


class QueueFull(Exception):
    """The queue cannot take the request's images now (the caller answers 503 + Retry-After)."""


class ShuttingDown(Exception):
    """The batcher is closed: no new work."""


@dataclass
class _Item:
    tensor: torch.Tensor
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


def _resolve(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    # runs on the event loop; the request may have timed out (future cancelled) meanwhile
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class MicroBatcher:
    """``await batcher.submit(tensors)`` -> ``run_batch``'s results for them, in order.

    ``run_batch`` gets a (B, ...) tensor stacked from up to ``max_batch`` images (of any requests)
    and returns B results; it runs in the worker thread, one call at a time.
    """

    def __init__(self, run_batch: Callable[[torch.Tensor], Sequence[Any]], max_batch: int = 16,
                 max_wait_s: float = 0.005, max_queue: int = 256) -> None:
        self.run_batch, self.max_batch, self.max_wait_s, self.max_queue = run_batch, max_batch, max_wait_s, max_queue
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._draining = False   # shutting down: run what is queued now, never wait for a fuller batch
        self.batches = 0          # forward passes run
        self.images = 0           # images scored
        self._thread = threading.Thread(target=self._loop, name="inpctl-serve-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def submit(self, tensors: Sequence[torch.Tensor]) -> list[Any]:
        """Queue all of ``tensors`` or none (a request is never half admitted); await the results.

        Raises QueueFull or ShuttingDown without queueing anything. Cancelling the awaiting task
        (a request timeout) drops its images that have not reached the model yet.
        """
        loop = asyncio.get_running_loop()
        items = [_Item(t, loop.create_future(), loop) for t in tensors]
        with self._cond:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            if len(self._queue) + len(items) > self.max_queue:
                raise QueueFull(f"the queue is full ({len(self._queue)} of {self.max_queue} images waiting)")
            self._queue.extend(items)
            self._cond.notify()
        futures = [item.future for item in items]
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:  # on cancellation: mark them so the worker skips them
                future.cancel()

    def drain(self) -> None:
        """Shutting down: no more requests will come, so queued images run at once instead of
        waiting up to ``max_wait_s`` for company (submissions are still taken)."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, finish what is queued, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- the worker thread
    def _take_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None  # closed and drained
            deadline = time.monotonic() + self.max_wait_s
            while len(self._queue) < self.max_batch and not (self._closed or self._draining):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Item] = []
            while self._queue and len(batch) < self.max_batch:
                item = self._queue.popleft()
                if not item.future.done():  # done here means cancelled: its request gave up
                    batch.append(item)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                results, error = list(self.run_batch(torch.stack([item.tensor for item in batch]))), None
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} images")
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests, never kills the worker
                results, error = [None] * len(batch), exc
            self.batches += 1
            self.images += len(batch)
            for item, result in zip(batch, results):
                try:
                    item.loop.call_soon_threadsafe(_resolve, item.future, result, error)
                except RuntimeError:  # the event loop is closed: nobody is waiting any more
                    pass
