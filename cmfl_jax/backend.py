"""Every platform-specific decision, made once, in one place.

* Kernel family of the model (`model.ops`): "gemm" (the GEMM-built kernels of
  `cmfl_jax.models.kernels`, fast on XLA:CPU) on CPU, "xla" (XLA's own
  convolutions, cuDNN on GPU) elsewhere.
* XLA:CPU compiler options of the compiled steps (`model.cpu_matmul`): who runs
  the matrix products. "eigen": Eigen's GEMM, with YNNPACK (XLA's default
  library for both) kept for the training step's reductions (BatchNorm batch
  statistics), where it is much faster; "ynnpack": XLA's default. Probed once
  per process: a jaxlib without the option falls back to its default.
* glibc malloc settings for the entry points (below).

The platform is that of the first device of the mesh the steps run on.

glibc malloc settings that keep XLA:CPU's per-step buffers in memory.

XLA:CPU allocates each executable's temporary buffer (hundreds of MiB to GiB
for a DenseNet step) with `malloc` at every run and frees it afterwards. With
glibc's defaults these large blocks are fresh `mmap`s, so every step
page-faults its whole working set again: on the 2-core benchmark machine,
undoing that raised the paper model's train throughput by 21% at 64x64
(BENCHMARKS.md has the A/B command). Serving all threads
from the main heap, never unmapping it and backing it with transparent huge
pages makes the next step reuse the same, already-mapped pages.

glibc reads these tunables only at process start, so the entry points
(`python -m cmfl_jax.main`, `.bench`, `.predict`, `.convert`, ...) re-execute
themselves once with them set. Set `CMFL_JAX_TUNE_MALLOC=0` to opt out; an
existing `glibc.malloc.*` setting in `GLIBC_TUNABLES` is respected as is.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

# ----------------------------------------------------------------------------
# Host allocator
# ----------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------
# Kernel family and XLA:CPU options
# ----------------------------------------------------------------------------
#: `model.ops` values: "auto" = "gemm" on CPU, "xla" elsewhere.
OPS = ("auto", "gemm", "xla")
#: `model.cpu_matmul` values (see the module docstring; measured in BENCHMARKS.md).
CPU_MATMUL = ("eigen", "ynnpack")
_YNN_FUSIONS = "xla_cpu_experimental_ynn_fusion_type"


def platform(mesh: Any = None) -> str:
  """"cpu", "gpu", "tpu", ...: of the mesh's first device, else of JAX's default."""
  if mesh is not None:
    return mesh.devices.flat[0].platform
  import jax  # not at import time: entry points re-execute before importing JAX
  return jax.default_backend()


def kernel_family(ops: str, on: str) -> str:
  """The kernel family `model.ops` stands for on platform `on`."""
  if ops not in OPS:
    raise ValueError(f"model.ops must be one of {OPS}, got {ops!r}")
  if ops == "auto":
    return "gemm" if on == "cpu" else "xla"
  return ops


@functools.cache
def _xla_cpu_knows_ynn_option() -> bool:
  """Whether this jaxlib's XLA:CPU has the YNNPACK fusion option (older
  ones, without YNNPACK, reject it)."""
  import jax
  import numpy as np
  from absl import logging
  try:
    jax.jit(lambda x: x + 1).lower(np.zeros(2, np.float32)).compile(
        compiler_options={_YNN_FUSIONS: "LIBRARY_FUSION_TYPE_REDUCE"})
    return True
  except Exception as error:  # noqa: BLE001 - any rejection means "not supported"
    logging.warning("model.cpu_matmul ignored: XLA:CPU has no %s (%s)", _YNN_FUSIONS,
                    str(error).splitlines()[0][:200])
    return False


def cpu_matmul_in_effect(choice: str, on: str) -> str | None:
  """`model.cpu_matmul` as it applies: None off CPU, "xla-default" where this
  XLA:CPU lacks the option."""
  if choice not in CPU_MATMUL:
    raise ValueError(f"model.cpu_matmul must be one of {CPU_MATMUL}, got {choice!r}")
  if on != "cpu":
    return None
  return choice if choice == "ynnpack" or _xla_cpu_knows_ynn_option() else "xla-default"


def step_compiler_options(model: Any, mesh: Any) -> tuple[dict | None, dict | None]:
  """XLA compiler options of the (train, eval) steps of `model` (a
  `ModelConfig`) on `mesh`; none but for "eigen" on CPU."""
  if cpu_matmul_in_effect(model.cpu_matmul, platform(mesh)) != "eigen":
    return None, None
  return {_YNN_FUSIONS: "LIBRARY_FUSION_TYPE_REDUCE"}, {_YNN_FUSIONS: ""}
