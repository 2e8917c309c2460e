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

from helpers import attribution_outputs, run_main  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir():
  return os.environ["JAX_COMPILATION_CACHE_DIR"]  # set above


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, cache_dir):
  """One uninterrupted train_and_eval run on 1 device, under the workdir guard."""
  workdir = str(tmp_path_factory.mktemp("ref"))
  proc = run_main(workdir, cache_dir=cache_dir, guard_log=workdir + ".guard.log")
  return workdir, proc


@pytest.fixture(scope="session")
def attribution_run(tmp_path_factory, cache_dir):
  """A one-epoch smoke run with the attribution head (classes bona_fide and
  toy_nn_upsampler), evaluated; shared by the predict, export and serve tests."""
  workdir = str(tmp_path_factory.mktemp("attribution") / "run")
  run_main(workdir, "--config.attribution.enabled=True", "--config.attribution.min_train_images=8",
           "--config.train.num_epochs=1", "--config.eval.conditions=()", cache_dir=cache_dir)
  return workdir


@pytest.fixture(scope="session")
def attribution_reference(attribution_run, tmp_path_factory):
  """The toy eval images as PNG files and what the checkpoint itself gives
  for them, through the evaluation path (not predict's, not the export's):
  {"paths", "pixels", "logits" [N, K], "joint", "fitted" (meta's open-set fit)}."""
  return attribution_outputs(attribution_run, str(tmp_path_factory.mktemp("attribution_images")))


@pytest.fixture(scope="session")
def attribution_export(attribution_run, tmp_path_factory):
  """The attribution run exported (in process: `bundle.export_model`)."""
  from cmfl_jax.exporting import bundle
  output = str(tmp_path_factory.mktemp("attribution_export") / "out")
  bundle.export_model(attribution_run, output)
  return output
