"""Named calibrations, stored as JSON beside the checkpoints:
`<workdir>/calibrations/<name>.json`. Plain JSON only: reading one never
executes anything from it. An existing calibration is never replaced unless
asked (`overwrite=True`)."""

from __future__ import annotations

import json
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
  """The stored calibration; CalibrationError naming the ones that exist."""
  source = path(workdir, name)
  if not tf.io.gfile.exists(source):
    known = names(workdir)
    raise CalibrationError(f"no calibration {name!r} in {workdir}; "
                           + (f"it has: {', '.join(known)}" if known else
                              "it has none (make one with python -m cmfl_jax.calibrate)"))
  try:
    with tf.io.gfile.GFile(source) as f:
      out = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CalibrationError(f"calibration {source} is not valid JSON: {e}") from None
  missing = [k for k in REQUIRED if not isinstance(out, dict) or k not in out]
  if missing:
    raise CalibrationError(f"calibration {source} lacks {', '.join(missing)}")
  return out
