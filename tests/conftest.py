"""Test setup: CPU only, quiet TensorFlow, a persistent XLA compilation cache
shared by this process and the subprocesses tests start (tiny shapes everywhere).

The suite runs on pytest-xdist workers (pyproject.toml's addopts; `-n 0` runs
it in this one process). Each worker is a session of its own, so what must be
done once for the whole run is shared explicitly: the XLA compilation cache
directory (below) and the `reference_run` fixture (run by the first worker
that needs it, under a file lock)."""

import json
import os
import shutil
import subprocess
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def _run_dir(prefix: str) -> str:
  """A new directory for this test run. The xdist controller imports this file
  before it starts its workers, which inherit its environment: a directory
  created here and named in an environment variable is shared by all of them.
  A worker that did not inherit it (one started some other way) still shares
  one with the other workers of its run, through the run's id."""
  run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  if run_id is None:
    return tempfile.mkdtemp(prefix=prefix)
  path = os.path.join(tempfile.gettempdir(), prefix + run_id)
  os.makedirs(path, exist_ok=True)
  return path


# One cache for every worker and subprocess of the run: a program compiled by
# one is loaded by the others. JAX writes entries without a lock; a reader that
# catches one half-written warns and compiles again (jax._src.compiler._cache_read).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _run_dir("cmfl_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The per-user caches (file verdicts, audit records, aligned crops) of this test
# session only: each xdist worker replaces the controller's with its own, so no
# test sees entries that a test of another worker wrote.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="cmfl_user_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import filelock  # noqa: E402
import pytest  # noqa: E402

from helpers import run_main  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir():
  return os.environ["JAX_COMPILATION_CACHE_DIR"]  # set above


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, cache_dir):
  """One uninterrupted train_and_eval run on 1 device, under the workdir guard.

  Under xdist it runs once for all workers: the first worker to ask runs it
  into the run's shared temporary directory and records its result there; each
  worker then uses a copy of that workdir (its guard log beside it, if any),
  since tests add files to the workdir (re-evaluation, calibrations), as they
  would in a serial session."""
  if not os.environ.get("PYTEST_XDIST_WORKER"):
    workdir = str(tmp_path_factory.mktemp("ref"))
    proc = run_main(workdir, cache_dir=cache_dir, guard_log=workdir + ".guard.log")
    return workdir, proc

  root = tmp_path_factory.getbasetemp().parent  # the run's; each worker's basetemp is below
  shared, record = root / "ref", root / "ref.json"
  with filelock.FileLock(str(root / "ref.lock")):
    if not record.exists():
      # What a worker that died during the run left, if one did.
      shutil.rmtree(shared, ignore_errors=True)
      if os.path.exists(f"{shared}.guard.log"):
        os.remove(f"{shared}.guard.log")
      shared.mkdir()
      try:
        proc = run_main(str(shared), cache_dir=cache_dir, guard_log=f"{shared}.guard.log")
      except Exception as e:
        record.write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        raise
      record.write_text(json.dumps({"args": proc.args, "returncode": proc.returncode,
                                    "stdout": proc.stdout, "stderr": proc.stderr}))
  result = json.loads(record.read_text())
  if "error" in result:
    raise AssertionError(f"the shared reference run failed on another worker: {result['error']}")
  workdir = str(tmp_path_factory.mktemp("ref"))
  shutil.copytree(shared, workdir, dirs_exist_ok=True)
  if os.path.exists(f"{shared}.guard.log"):
    shutil.copy2(f"{shared}.guard.log", f"{workdir}.guard.log")
  return workdir, subprocess.CompletedProcess(**result)
