"""Named verdict calibrations (`python -m cmfl_jax.calibrate`, stored by
`cmfl_jax.verdicts.store` in `<workdir>/calibrations/<name>.json`) as export
uses them: the threshold it relies on checked, the whole record carried into
the model card."""

from __future__ import annotations

from typing import Any

from cmfl_jax.exporting.errors import ExportError
from cmfl_jax.verdicts import binding, store


def read(workdir: str, name: str) -> dict[str, Any]:
  """The calibration `name` of `workdir`, read and checked by the one reader
  (`verdicts.store.load`): {"name", "path", "threshold", "record"}; an
  unknown name or a bad file raises ExportError."""
  try:
    record = store.load(workdir, name)
  except store.CalibrationError as e:
    raise ExportError(str(e).splitlines()[0]) from None
  return {"name": name, "path": store.path(workdir, name), "threshold": float(record["threshold"]),
          "record": record}


def check_binding(chosen: dict[str, Any], restored) -> None:
  """ExportError unless `chosen` (`read`) was fitted on the restored
  checkpoint's weights, input size and decoding (`verdicts.binding`)."""
  current = binding.fitted_on(restored.meta, f"{restored.kind}_{restored.step}",
                              restored.config.data.image_size, None, None)
  try:
    binding.check(chosen["record"], current, chosen["name"])
  except store.CalibrationError as e:
    raise ExportError(str(e)) from None
