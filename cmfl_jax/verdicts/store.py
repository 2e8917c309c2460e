"""Named calibrations, stored as JSON beside the checkpoints:
`<workdir>/calibrations/<name>.json`. Plain JSON only: reading one never
executes anything from it. An existing calibration is never replaced unless
asked (`overwrite=True`)."""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import tensorflow as tf

DIRNAME = "calibrations"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
REQUIRED = ("threshold", "false_alarm", "kind", "n", "k", "guarantee")


class CalibrationError(ValueError):
  """A missing, malformed or clashing calibration."""


def path(workdir: str, name: str) -> str:
  if not _NAME.match(name or ""):
    raise CalibrationError(f"bad calibration name {name!r}: use letters, digits, '_', '-', '.'")
  return os.path.join(workdir, DIRNAME, f"{name}.json")


def exists(workdir: str, name: str) -> bool:
  return tf.io.gfile.exists(path(workdir, name))


def names(workdir: str) -> list[str]:
  folder = os.path.join(workdir, DIRNAME)
  if not tf.io.gfile.isdir(folder):
    return []
  return sorted(f[:-5] for f in tf.io.gfile.listdir(folder) if f.endswith(".json"))


def save(workdir: str, name: str, calibration: dict[str, Any], overwrite: bool = False) -> str:
  """Writes the calibration (atomically); refuses to replace one unless `overwrite`."""
  target = path(workdir, name)
  if exists(workdir, name) and not overwrite:
    raise CalibrationError(f"calibration {name!r} exists ({target}); choose another --name "
                           "or pass --overwrite")
  tf.io.gfile.makedirs(os.path.dirname(target))
  tmp = f"{target}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump({"name": name, **calibration}, f, indent=2)
  tf.io.gfile.rename(tmp, target, overwrite=True)
  return target


def load(workdir: str, name: str) -> dict[str, Any]:
  """The stored calibration, checked (the one reader predict, export and the
  service use): CalibrationError naming the ones that exist, or saying what
  is malformed."""
  source = path(workdir, name)
  if not tf.io.gfile.exists(source):
    known = names(workdir)
    raise CalibrationError(f"unknown calibration {name!r} in {workdir}; available: "
                           + (", ".join(known) if known else
                              "none (make one with python -m cmfl_jax.calibrate)"))
  try:
    with tf.io.gfile.GFile(source) as f:
      out = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CalibrationError(f"calibration {source} is not valid JSON: {e}") from None
  missing = [k for k in REQUIRED if not isinstance(out, dict) or k not in out]
  if missing:
    raise CalibrationError(f"calibration {source} lacks {', '.join(missing)}")
  if not _probability(out["threshold"]):
    raise CalibrationError(f"calibration {source} has no valid 'threshold' (a P(real) in "
                           f"[0, 1]), got {out['threshold']!r}")
  band = out.get("band")
  if band is not None and not (isinstance(band, dict) and _probability(band.get("lo"))
                               and isinstance(band.get("hi"), (int, float))
                               and band["lo"] <= out["threshold"] <= band["hi"]):
    raise CalibrationError(f"calibration {source} has a malformed 'band' (lo <= threshold "
                           f"<= hi expected), got {band!r}")
  if out.get("fitted_on") is not None and not isinstance(out["fitted_on"], dict):
    raise CalibrationError(f"calibration {source} has a malformed 'fitted_on'")
  return out


def _probability(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and 0.0 <= value <= 1.0)
