"""One export: checkpoint -> OUT/{saved_model/, model.jax_exported,
model_card.json, MODEL_CARD.md}, all or nothing.

Everything that can be refused (output exists, unknown calibration, missing
or damaged checkpoint) is checked before anything is written; the artifacts
are written into a staging directory, read back and run on probe images
there, and only then renamed to OUT.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import numpy as np
import tensorflow as tf

from cmfl_jax.exporting import calibrations, card, jax_export, savedmodel, serving_fn, staging
from cmfl_jax.exporting.errors import ExportError

#: Platforms the artifacts are lowered for (the caller's is chosen at run time).
PLATFORMS = ("cpu", "cuda")
#: Largest difference allowed between an artifact read back and the in-process function.
SELF_CHECK_TOLERANCE = 1e-5


def _directory_bytes(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _max_difference(got: dict, expected: dict) -> float:
  """Largest absolute difference over all outputs, which must have the model's
  names, dtypes and shapes (an integer output, the generator index, then
  counts any disagreement as at least 1)."""
  if set(got) != set(expected):
    raise ExportError(f"artifact outputs {sorted(got)} differ from {sorted(expected)}")
  got = {k: np.asarray(v) for k, v in got.items()}
  for k, want in expected.items():
    if (got[k].dtype, got[k].shape) != (want.dtype, want.shape):
      raise ExportError(f"artifact output {k} is {got[k].dtype}{list(got[k].shape)}, the "
                        f"model's {want.dtype}{list(want.shape)}")
  return max(float(np.max(np.abs(got[k].astype(np.float64) - want.astype(np.float64))))
             for k, want in expected.items())


def _self_check(directory: str, probe: np.ndarray, expected: dict) -> dict[str, float]:
  """Both artifacts, read back from disk, on the probe images."""
  exported = jax_export.read(os.path.join(directory, jax_export.FILENAME))
  loaded = tf.saved_model.load(os.path.join(directory, savedmodel.DIRNAME))
  got_tf = loaded.signatures[savedmodel.SIGNATURE](**{savedmodel.INPUT: tf.constant(probe)})
  diffs = {"jax_exported": _max_difference(jax.device_get(exported.call(probe)), expected),
           "saved_model": _max_difference({k: v.numpy() for k, v in got_tf.items()}, expected)}
  for name, diff in diffs.items():
    if not diff <= SELF_CHECK_TOLERANCE:
      raise ExportError(f"the written {name} differs from the model by {diff:g} on probe images")
  return diffs


def export_model(workdir: str, output: str, which: str = "best", calibration: str | None = None,
                 overwrite: bool = False, platforms: Sequence[str] = PLATFORMS) -> dict[str, Any]:
  """Writes the export of checkpoint `which` of `workdir` to `output`; returns
  the model card. Raises ExportError (one-line message) and leaves no
  `output` behind (nor changes an existing one) when it cannot."""
  staging.check_target(output, overwrite)
  chosen = calibrations.read(workdir, calibration) if calibration else None
  restored = serving_fn.restore(workdir, which)
  if chosen:  # the framing and --align are the user's at use: checked there
    calibrations.check_binding(chosen, restored)
  constants = serving_fn.Constants.of(restored.meta, chosen, restored.model.num_sources)
  serve = serving_fn.serving_function(restored, constants)
  names = serving_fn.output_names(restored.model, constants)
  size = int(restored.config.data.image_size)
  probe = serving_fn.probe_images(size)
  expected = {k: np.asarray(v) for k, v in jax.device_get(jax.jit(serve)(probe)).items()}
  if sorted(expected) != sorted(names):
    raise ExportError(f"model outputs {sorted(expected)} are not the expected {names}")
  exported = jax_export.export_function(serve, size, platforms)
  with staging.staged_directory(output, overwrite) as directory:
    try:
      savedmodel.write(serve, size, os.path.join(directory, savedmodel.DIRNAME), platforms)
      jax_export.write(exported, os.path.join(directory, jax_export.FILENAME))
      diffs = _self_check(directory, probe, expected)
      artifacts = {
          savedmodel.DIRNAME: {
              "format": "TensorFlow SavedModel (jax2tf, native serialization)",
              "signature": savedmodel.SIGNATURE,
              **savedmodel.signature_of(os.path.join(directory, savedmodel.DIRNAME)),
              "bytes": _directory_bytes(os.path.join(directory, savedmodel.DIRNAME))},
          jax_export.FILENAME: {
              "format": "jax.export serialized Exported", "batch": "symbolic (b)",
              "calling_convention_version": exported.calling_convention_version,
              "bytes": _directory_bytes(os.path.join(directory, jax_export.FILENAME))},
          "platforms": list(platforms), "tested_on": jax.default_backend(),
          "self_check_max_abs_diff": diffs,
          "versions": {"jax": jax.__version__, "tensorflow": tf.__version__}}
      card.write(card.build(workdir, restored, constants, chosen, names, artifacts), directory)
    except (OSError, tf.errors.OpError) as e:
      reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
      raise ExportError(f"writing the export failed: {str(reason).splitlines()[0]}") from None
  with open(os.path.join(os.path.abspath(output), card.JSON_NAME)) as f:
    return json.load(f)
