"""Test setup: CPU only, quiet TensorFlow, a persistent XLA compilation cache
shared by this process and the subprocesses tests start (tiny shapes everywhere).

The suite runs on pytest-xdist workers (pyproject.toml's addopts; `-n 0` runs
it in this one process). Each worker is a session of its own, so what must be
done once for the whole run is shared explicitly: the XLA compilation cache
directory (below) and the expensive runs (`reference_run`, `attribution_run`:
made by the first worker that needs them, under a file lock, `_once`)."""

import glob
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

from helpers import (ATTRIBUTION_FLAGS, attribution_outputs, run_main,  # noqa: E402
                     write_attribution_folders)


@pytest.fixture(scope="session")
def cache_dir():
  return os.environ["JAX_COMPILATION_CACHE_DIR"]  # set above


def _once(tmp_path_factory, name, make):
  """(directory, result): `make(directory)` (its result JSON-able) done once
  per test run. Without xdist into a fresh directory; under xdist by the first
  worker that asks, in the run's shared temporary directory under a file lock,
  its result (or failure) recorded beside it for the other workers. Every
  worker then gets its own copy of the directory, since tests add files to
  workdirs (re-evaluations, calibrations), as in a serial session."""
  if not os.environ.get("PYTEST_XDIST_WORKER"):
    path = tmp_path_factory.mktemp(name)
    return str(path), make(str(path))
  root = tmp_path_factory.getbasetemp().parent  # the run's; each worker's basetemp is below
  shared, record = root / name, root / f"{name}.json"
  with filelock.FileLock(str(root / f"{name}.lock")):
    if not record.exists():
      shutil.rmtree(shared, ignore_errors=True)  # what a worker that died left, if one did
      shared.mkdir()
      try:
        result = make(str(shared))
      except Exception as e:
        record.write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        raise
      record.write_text(json.dumps({"result": result}))
  recorded = json.loads(record.read_text())
  if "error" in recorded:
    raise AssertionError(f"the shared {name!r} failed on another worker: {recorded['error']}")
  copy = tmp_path_factory.mktemp(name)
  shutil.copytree(shared, copy, dirs_exist_ok=True)
  return str(copy), recorded["result"]


def _process(proc):
  return {"args": proc.args, "returncode": proc.returncode, "stdout": proc.stdout,
          "stderr": proc.stderr}


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, cache_dir):
  """One uninterrupted train_and_eval run on 1 device, under the workdir guard
  (its log beside the workdir, as `<workdir>.guard.log`)."""
  def make(path):
    workdir = os.path.join(path, "run")
    return _process(run_main(workdir, cache_dir=cache_dir, guard_log=workdir + ".guard.log"))

  path, result = _once(tmp_path_factory, "ref", make)
  return os.path.join(path, "run"), subprocess.CompletedProcess(**result)


@pytest.fixture(scope="session")
def attribution_data(tmp_path_factory):
  """Image folders: bona fide, two generators known in training, one unseen."""
  return _once(tmp_path_factory, "attribution_data", write_attribution_folders)[0]


@pytest.fixture(scope="session")
def attribution_run(tmp_path_factory, cache_dir, attribution_data):
  """A run with the attribution head on `attribution_data` (classes
  bona_fide, stripes, upsample2), evaluated on every family: the workdir and
  the process (its printed report). Shared by the attribution, predict,
  export and serve tests."""
  def make(path):
    return _process(run_main(
        os.path.join(path, "run"), *ATTRIBUTION_FLAGS,
        f"--config.data.data_root={attribution_data}",
        "--config.data.eval_splits=('eval_upsample2','eval_stripes','eval_upsample4')",
        "--config.attribution.min_train_images=16", "--config.train.num_epochs=4",
        # The tiny smoke model learns in 64 steps at this rate (1e-3: not at all).
        "--config.optim.learning_rate=0.01", cache_dir=cache_dir))

  path, result = _once(tmp_path_factory, "attribution", make)
  return os.path.join(path, "run"), subprocess.CompletedProcess(**result)


@pytest.fixture(scope="session")
def attribution_reference(attribution_run, attribution_data):
  """The eval images of a known and the unseen generator, and what the
  checkpoint itself gives for them through the evaluation path (not
  predict's, not the export's): {"paths", "pixels", "logits" [N, K],
  "joint", "fitted" (meta's open-set fit)}."""
  paths = sorted(glob.glob(os.path.join(attribution_data, "eval_stripes", "*", "*.png"))
                 + glob.glob(os.path.join(attribution_data, "eval_upsample4", "upsample4",
                                          "*.png")))
  return attribution_outputs(attribution_run[0], paths)


@pytest.fixture(scope="session")
def attribution_export(attribution_run, tmp_path_factory):
  """The attribution run exported (in process: `bundle.export_model`)."""
  from cmfl_jax.exporting import bundle
  output = str(tmp_path_factory.mktemp("attribution_export") / "out")
  bundle.export_model(attribution_run[0], output)
  return output
