"""Wall-clock timing for the benchmarks: warm-up excluded, medians of repeats."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def interleaved_times(fns: list[Callable[[], Any]], repeats: int) -> list[list[float]]:
  """Seconds of each `fn()` (which must block) per round, `repeats` rounds,
  after one warm-up call each. The functions take turns within a round, so a
  slow drift of the machine (other load, clocks) hits all of them alike."""
  for fn in fns:
    fn()
  times: list[list[float]] = [[] for _ in fns]
  for _ in range(repeats):
    for fn, out in zip(fns, times):
      start = time.perf_counter()
      fn()
      out.append(time.perf_counter() - start)
  return times


def timed(fn: Callable[[], Any], repeats: int) -> float:
  """Median seconds of `fn()` (which must block) after one warm-up call."""
  return statistics.median(interleaved_times([fn], repeats)[0])
