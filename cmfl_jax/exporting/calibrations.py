"""Named verdict calibrations (`python -m cmfl_jax.calibrate`, stored by
`cmfl_jax.verdicts.store` in `<workdir>/calibrations/<name>.json`) as export
uses them: the threshold it relies on checked, the whole record carried into
the model card."""

from __future__ import annotations

import math
from typing import Any

from cmfl_jax.exporting.errors import ExportError
from cmfl_jax.verdicts import store


def read(workdir: str, name: str) -> dict[str, Any]:
  """The calibration `name` of `workdir`, validated: {"name", "path",
  "threshold", "record"}; an unknown name or a bad file raises ExportError."""
  available = store.names(workdir)
  if name not in available:
    listed = ", ".join(available) or "none"
    raise ExportError(f"unknown calibration {name!r} in {workdir}; available: {listed}")
  try:
    record = store.load(workdir, name)
  except store.CalibrationError as e:
    raise ExportError(str(e).splitlines()[0]) from None
  path = store.path(workdir, name)
  threshold = record["threshold"]
  if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
      or not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0):
    raise ExportError(f"calibration {path} has no valid 'threshold' (a P(real) in [0, 1]), "
                      f"got {threshold!r}")
  return {"name": name, "path": path, "threshold": float(threshold), "record": record}
