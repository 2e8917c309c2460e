"""Dynamic batching in front of one compiled function.

Requests put single images on a queue; one worker takes the first, waits at
most `max_wait` seconds for more (up to `batch_size`; not at all when no other
request is in flight), and runs the batch in
a thread of its own, so the event loop keeps accepting and answering while
the model works. The scorer pads each batch to the smallest of a few
compiled sizes that holds it (`scoring.model.batch_shapes`), so a lone
request waits for one image's forward pass and a busy queue fills the
largest. Admission is bounded: `admit` refuses once `max_pending` requests
are in flight, and the caller answers 503. A request waits at most
`timeout` seconds for its results (`TimedOut`), and a batch whose scorer
returns the wrong number of results fails all its requests, so no request
can hold its slot forever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from typing import Any, Callable

import numpy as np


class Busy(Exception):
  """Too many requests in flight; retry after `retry_after` seconds."""

  def __init__(self, retry_after: int):
    super().__init__(f"server busy; retry after {retry_after} s")
    self.retry_after = retry_after


class TimedOut(Exception):
  """A request's results did not come within the batcher's timeout."""


class Batcher:
  """`score(images) -> list of results` batched; see the module docstring."""

  def __init__(self, run: Callable[[np.ndarray], list[Any]], batch_size: int,
               max_wait: float = 0.005, max_pending: int = 256, timeout: float = 60.0):
    self._run = run
    self.timeout = timeout
    self.batch_size = batch_size
    self.max_wait = max_wait
    self.max_pending = max_pending
    self.pending = 0
    self.batches: list[int] = []  # sizes of the batches run (the last 1000)
    self._queue: asyncio.Queue | None = None
    self._worker: asyncio.Task | None = None
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")

  def start(self) -> None:
    self._queue = asyncio.Queue()
    self._worker = asyncio.get_running_loop().create_task(self._loop())

  async def stop(self) -> None:
    if self._worker:
      self._worker.cancel()
      with contextlib.suppress(asyncio.CancelledError):
        await self._worker
    self._pool.shutdown(wait=False, cancel_futures=True)

  @contextlib.contextmanager
  def admit(self):
    """A slot for one request for as long as it is in flight (reading,
    decoding, queued, scored); `Busy` when all `max_pending` are taken."""
    if self.pending >= self.max_pending:
      raise Busy(max(1, round(self.max_wait + 1)))
    self.pending += 1
    try:
      yield
    finally:
      self.pending -= 1

  async def score(self, images: np.ndarray) -> list[Any]:
    """The results of `images` (each queued on its own, batched with others)."""
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in images]
    for image, future in zip(images, futures):
      self._queue.put_nowait((image, future))  # bounded by admit(): max_pending x faces
    try:
      return list(await asyncio.wait_for(asyncio.gather(*futures), self.timeout))
    except asyncio.TimeoutError:
      raise TimedOut(f"no result within {self.timeout:g} s") from None

  async def call(self, fn: Callable[..., Any], *args) -> Any:
    """`fn(*args)` in the model's thread (e.g. explanations), between batches."""
    return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

  async def _next_batch(self) -> list[tuple[np.ndarray, asyncio.Future]]:
    batch = [await self._queue.get()]
    deadline = time.monotonic() + self.max_wait
    while len(batch) < self.batch_size:
      if self._queue.empty() and self.pending <= len(batch):
        break  # no other request in flight: waiting would only add latency
      left = deadline - time.monotonic()
      if left <= 0:
        while len(batch) < self.batch_size and not self._queue.empty():
          batch.append(self._queue.get_nowait())
        break
      try:
        batch.append(await asyncio.wait_for(self._queue.get(), left))
      except asyncio.TimeoutError:
        break
    return [(i, f) for i, f in batch if not f.done()]  # drop those whose client left

  async def _loop(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      batch = await self._next_batch()
      if not batch:
        continue
      images = np.stack([image for image, _ in batch])
      try:
        results = await loop.run_in_executor(self._pool, self._run, images)
      except Exception as e:  # noqa: BLE001 - a failed batch fails its requests, not the server
        for _, future in batch:
          if not future.done():
            future.set_exception(e)
        continue
      if len(results) != len(batch):  # each request's own result, or none gets one
        error = RuntimeError(f"the scorer returned {len(results)} results for {len(batch)} images")
        for _, future in batch:
          if not future.done():
            future.set_exception(error)
        continue
      self.batches = self.batches[-999:] + [len(batch)]
      for i, (_, future) in enumerate(batch):
        if not future.done():
          future.set_result(results[i])
