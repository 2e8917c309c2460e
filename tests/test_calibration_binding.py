"""A calibration is bound to what it was fitted on (`verdicts.binding`):
predict, export and the service refuse it on other weights, another input
size or framing, or another --align; old calibrations without the record
are checked on what they did record, with a warning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from cmfl_jax import verdicts
from cmfl_jax.verdicts import binding, conformal, store
from helpers import ROOT, main_env

OTHER_WEIGHTS = "0" * 64


def _current(workdir):
  from cmfl_jax.scoring import model as scoring_model
  from cmfl_jax.training import checkpointing
  kind, step = checkpointing.select_step(workdir, "best")
  meta = checkpointing.read_meta(checkpointing.make_managers(workdir)[kind], step)
  config = scoring_model.config_from_checkpoint(workdir, "best")
  return binding.fitted_on(meta, f"{kind}_{step}", config.data.image_size,
                           bool(config.data.aligned), False), config


def _save(workdir, name, fitted_on, **extra):
  record = {**conformal.threshold(np.linspace(0, 1, 40), 0.05), "band": None, **extra}
  if fitted_on is not None:
    record[binding.KEY] = fitted_on
  store.save(workdir, name, record, overwrite=True)


def test_check_names_both_and_compares_only_what_is_known(caplog):
  here = {"weights": "a" * 64, "checkpoint": "best_10", "image_size": 32,
          "framing": "centre_crop", "align": False, "preprocessing": binding.PREPROCESSING}
  binding.check({binding.KEY: here}, here, "cam")
  for key, other in (("weights", "b" * 64), ("image_size", 64), ("framing", "aligned"),
                     ("align", True), ("preprocessing", "v0")):
    with pytest.raises(store.CalibrationError) as e:
      binding.check({binding.KEY: {**here, key: other}}, here, "cam")
    assert "calibration 'cam' was fitted on" in str(e.value) and "\n" not in str(e.value)
  # Export does not know the framing or --align (the user's at use): not compared.
  binding.check({binding.KEY: {**here, "align": True}}, {**here, "align": None}, "cam")
  # An old calibration (no record): its checkpoint step and alignment are
  # compared; the rest cannot be, and a warning says so.
  with pytest.raises(store.CalibrationError, match="made for checkpoint best_9 "):
    binding.check({"checkpoint": "best_9", "aligned_faces": False}, here, "old")
  with pytest.raises(store.CalibrationError, match="--align"):
    binding.check({"checkpoint": "best_10", "aligned_faces": True}, here, "old")
  with caplog.at_level(logging.WARNING):
    binding.check({"checkpoint": "latest_10", "aligned_faces": False}, here, "old")
  assert "predates calibration fingerprints" in caplog.text
  # The rule both predict and the service use checks the one that decides,
  # an export's carried one included.
  carried = {"chosen_calibration": {"name": "lax", "threshold": 0.7,
                                    binding.KEY: {**here, "weights": "b" * 64}}}
  with pytest.raises(store.CalibrationError, match="'lax'"):
    verdicts.rule(carried, using=here)


def test_predict_export_and_serve_refuse_a_calibration_of_other_weights(reference_run, tmp_path):
  """The same calibration file: accepted for its own checkpoint, refused
  (one line naming both, exit 1, no traceback) once it records other
  weights, and for predict also on another framing."""
  from PIL import Image

  from cmfl_jax.scoring import decisions
  from cmfl_jax.exporting import bundle
  from cmfl_jax.exporting.errors import ExportError
  from cmfl_jax.serving import model as model_lib
  import shutil
  workdir = str(tmp_path / "run")  # a copy: the shared run's calibrations stay as they are
  shutil.copytree(reference_run[0], workdir)
  current, config = _current(workdir)
  image = tmp_path / "x.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(image)

  _save(workdir, "own", current)
  rows = list(decisions.predict(workdir, [str(image)], calibration="own").rows)
  assert rows[0]["verdict"] in ("real", "synthetic", "unsure")
  with pytest.raises(store.CalibrationError, match="framing"):
    decisions.predict(workdir, [str(image)], calibration="own",
                    aligned=not bool(config.data.aligned))

  _save(workdir, "other", {**current, "weights": OTHER_WEIGHTS})
  env = main_env(os.environ["JAX_COMPILATION_CACHE_DIR"])
  proc = subprocess.run([sys.executable, "-m", "cmfl_jax.predict", f"--workdir={workdir}",
                         "--calibration=other", str(image)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith("error: calibration 'other' was fitted on checkpoint "), line
  assert "weights 000000000000" in line and f"weights {current['weights'][:12]}" in line

  out = tmp_path / "export"
  with pytest.raises(ExportError, match="weights 000000000000.*but is applied to"):
    bundle.export_model(workdir, str(out), calibration="other", platforms=("cpu",))
  assert not out.exists()
  with pytest.raises(store.CalibrationError, match="'other' was fitted on"):
    model_lib.load(workdir, calibration="other", batch_size=2)
