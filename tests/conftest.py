"""Test setup: CPU only, quiet TensorFlow, a persistent XLA compilation cache
shared by this process and the subprocesses tests start (tiny shapes everywhere)."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="cmfl_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The per-user caches (file verdicts, audit records, aligned crops) of this test session only.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="cmfl_user_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import pytest  # noqa: E402

from helpers import run_main  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir():
  return os.environ["JAX_COMPILATION_CACHE_DIR"]  # set above


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, cache_dir):
  """One uninterrupted train_and_eval run on 1 device, under the workdir guard."""
  workdir = str(tmp_path_factory.mktemp("ref"))
  proc = run_main(workdir, cache_dir=cache_dir, guard_log=workdir + ".guard.log")
  return workdir, proc
