"""Test setup: CPU only, quiet TensorFlow, a persistent XLA compilation cache
shared by this process and the subprocesses tests start (tiny shapes everywhere)."""

import glob
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

from helpers import (ATTRIBUTION_FLAGS, attribution_outputs, run_main,  # noqa: E402
                     write_attribution_folders)


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
def attribution_data(tmp_path_factory):
  """Image folders: bona fide, two generators known in training, one unseen."""
  root = str(tmp_path_factory.mktemp("attribution_data"))
  write_attribution_folders(root)
  return root


@pytest.fixture(scope="session")
def attribution_run(tmp_path_factory, cache_dir, attribution_data):
  """A run with the attribution head on `attribution_data` (classes
  bona_fide, stripes, upsample2), evaluated on every family: the workdir and
  the process (its printed report). Shared by the attribution, predict,
  export and serve tests."""
  workdir = str(tmp_path_factory.mktemp("attribution") / "run")
  proc = run_main(workdir, *ATTRIBUTION_FLAGS, f"--config.data.data_root={attribution_data}",
                  "--config.data.eval_splits=('eval_upsample2','eval_stripes','eval_upsample4')",
                  "--config.attribution.min_train_images=16", "--config.train.num_epochs=4",
                  # The tiny smoke model learns in 64 steps at this rate (1e-3: not at all).
                  "--config.optim.learning_rate=0.01", cache_dir=cache_dir)
  return workdir, proc


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
