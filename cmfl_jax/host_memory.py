"""glibc malloc settings that keep XLA:CPU's per-step buffers in memory.

XLA:CPU allocates each executable's temporary buffer (hundreds of MiB to GiB
for a DenseNet step) with `malloc` at every run and frees it afterwards. With
glibc's defaults these large blocks are fresh `mmap`s, so every step
page-faults its whole working set again: on the 2-core benchmark machine,
undoing that raised the paper model's train throughput by 21% at 64x64
(BENCHMARKS.md has the A/B command). Serving all threads
from the main heap, never unmapping it and backing it with transparent huge
pages makes the next step reuse the same, already-mapped pages.

glibc reads these tunables only at process start, so the entry points
(`python -m cmfl_jax.main`, `.benchmark`, `.predict`, `.convert`) re-execute
themselves once with them set. Set `CMFL_JAX_TUNE_MALLOC=0` to opt out; an
existing `glibc.malloc.*` setting in `GLIBC_TUNABLES` is respected as is.
"""

from __future__ import annotations

import os
import sys

TUNABLES = ("glibc.malloc.arena_max=1", "glibc.malloc.mmap_max=0",
            "glibc.malloc.trim_threshold=1099511627776", "glibc.malloc.hugetlb=1")
OPT_OUT = "CMFL_JAX_TUNE_MALLOC"


def _glibc_version() -> tuple[int, int] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return None
  if name != "glibc":
    return None
  major, minor = version.split(".")[:2]
  return int(major), int(minor)


def tuned_environment(environ: dict[str, str]) -> dict[str, str] | None:
  """The environment to re-execute with, or None when nothing should change."""
  if environ.get(OPT_OUT, "1") == "0" or "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
    return None
  version = _glibc_version()
  if version is None or version < (2, 26):
    return None
  # glibc.malloc.hugetlb exists from 2.35; older versions ignore unknown names.
  tunables = ":".join(filter(None, [environ.get("GLIBC_TUNABLES"), *TUNABLES]))
  return {**environ, "GLIBC_TUNABLES": tunables}


def reexec_with_tuned_malloc() -> None:
  """Re-executes this process (same PID, same command line) with `TUNABLES`
  unless they, or an opt-out, are already in place. Call only from a
  `__main__` block: it replaces the running program."""
  env = tuned_environment(dict(os.environ))
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
