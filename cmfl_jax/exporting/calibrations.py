"""Named verdict calibrations stored beside the checkpoints.

`python -m cmfl_jax.calibrate` (issue #29) stores each as JSON in
`<workdir>/calibrations/<name>.json` with at least `threshold`, a cut on
P(real) of the joint head. Export reads them here, checks the fields it relies
on and carries the whole record into the model card.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from cmfl_jax.exporting.errors import ExportError

DIRECTORY = "calibrations"


def available(workdir: str) -> list[str]:
  """Names of the stored calibrations, sorted."""
  directory = os.path.join(workdir, DIRECTORY)
  if not os.path.isdir(directory):
    return []
  return sorted(f[:-len(".json")] for f in os.listdir(directory) if f.endswith(".json"))


def read(workdir: str, name: str) -> dict[str, Any]:
  """The calibration `name` of `workdir`, validated: {"name", "path",
  "threshold", "record"}; an unknown name or a bad file raises ExportError."""
  have = available(workdir)
  if name not in have or os.sep in name or name.startswith("."):
    listed = ", ".join(have) if have else "none"
    raise ExportError(f"unknown calibration {name!r} under {os.path.join(workdir, DIRECTORY)}; "
                      f"available: {listed}")
  path = os.path.join(workdir, DIRECTORY, f"{name}.json")
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise ExportError(f"calibration {path} cannot be read: {str(e).splitlines()[0]}") from None
  threshold = record.get("threshold") if isinstance(record, dict) else None
  if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
      or not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0):
    raise ExportError(f"calibration {path} has no valid 'threshold' (a P(real) in [0, 1]), "
                      f"got {threshold!r}")
  return {"name": name, "path": path, "threshold": float(threshold), "record": record}
