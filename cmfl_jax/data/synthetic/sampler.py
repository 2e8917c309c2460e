"""The benchmark's images by version: `sample` is what the TFDS builder
stores. Version 1 (`simulate`) is kept buildable so its published tables
stay reproducible; version 2 (`v2`) is the default."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import functools
import multiprocessing
import os
import sys
from types import ModuleType
from typing import Iterator

import numpy as np

from cmfl_jax.data.synthetic import simulate, v2

# Version -> its module: `render(source, rng, size)` draws one image, the
# docstring's first paragraph is the TFDS description.
VERSIONS: dict[str, ModuleType] = {"1.0.0": simulate, "2.0.0": v2}
LATEST = "2.0.0"


def sample(source: str, split: str, num: int, size: int, seed: int = 0,
           version: str = LATEST, workers: int | None = None) -> Iterator[np.ndarray]:
  """Yields `num` uint8 images of one source ("real", "real2" or a family).

  Image i depends only on (version, seed, split, source, i): content seeds are
  disjoint across splits and sources, and the same arguments always give the
  same pixels, however many `workers` (processes; default: one per core) draw
  them.
  """
  if size % 8:
    raise ValueError(f"image size must be a multiple of 8, got {size}")
  if version not in VERSIONS:
    raise ValueError(f"unknown cmfl_synth_faces version {version!r}; choose from "
                     f"{sorted(VERSIONS)}")
  if source not in simulate.REAL_SOURCES + simulate.FAMILIES:
    raise ValueError(f"unknown source {source!r}; choose from "
                     f"{simulate.REAL_SOURCES + simulate.FAMILIES}")
  draw = functools.partial(_draw_range, version, seed, split, source, size)
  workers = _available_cores() if workers is None else workers
  if workers <= 1 or num < 2 * _CHUNK:
    for start in range(0, num, _CHUNK):
      yield from draw(start, min(start + _CHUNK, num))
    return
  # In order, at most 2 chunks per worker in flight: memory stays bounded
  # however slowly the consumer (TFDS's encoder and writer) takes them.
  pool = _pool(workers)
  starts = iter(range(0, num, _CHUNK))
  pending: list[concurrent.futures.Future] = []
  while True:
    while len(pending) < 2 * workers and (start := next(starts, None)) is not None:
      with _main_hidden():  # a submit may start a worker process
        pending.append(pool.submit(draw, start, min(start + _CHUNK, num)))
    if not pending:
      return
    yield from pending.pop(0).result()


#: Images per task of the process pool.
_CHUNK = 16


def _draw_range(version: str, seed: int, split: str, source: str, size: int, start: int,
                stop: int) -> list[np.ndarray]:
  """Images `start..stop-1` of one source (run in a worker process or here)."""
  render = VERSIONS[version].render
  out = []
  for i in range(start, stop):
    rng = np.random.default_rng([seed, simulate.SPLIT_SEED[split], simulate.SOURCE_SEED[source],
                                 i])
    out.append(simulate.store(np.round(render(source, rng, size) * 255).astype(np.uint8), rng))
  return out


def _available_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


_POOLS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
  """One pool per worker count, kept for the process's lifetime. Spawned, not
  forked: the parent may run TensorFlow and JAX threads."""
  if workers not in _POOLS:
    if not _POOLS:
      atexit.register(_shutdown_pools)
    _POOLS[workers] = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"))
  return _POOLS[workers]


@contextlib.contextmanager
def _main_hidden():
  """The caller's main module out of sight while worker processes start.
  A spawned worker re-imports the parent's `__main__` before it runs
  anything: a script without a main guard would run again in every worker
  (and fail there), and a script on standard input cannot be re-read at all
  ('<stdin>'). The workers need only this module, which they import by name."""
  main = sys.modules.get("__main__")
  sys.modules["__main__"] = ModuleType("__main__")
  try:
    yield
  finally:
    if main is not None:
      sys.modules["__main__"] = main


def _shutdown_pools() -> None:
  """At exit, while the modules the pools need at shutdown are still there."""
  while _POOLS:
    _POOLS.popitem()[1].shutdown()
