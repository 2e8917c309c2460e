"""What a calibration was fitted on, and the check that it is applied to
nothing else.

A threshold's false-alarm guarantee holds for the scores it was computed
from: the same weights, input size, framing (aligned face crop, or resize and
centre crop), face alignment at use (`--align`) and decoding. `calibrate`
records them as "fitted_on"; predict, export and the service compare them
with the model and input they are about to use (`check`), and refuse a
mismatch with a message naming both. `best` moving after more training, or
`--checkpoint=latest`, is caught by the weights' fingerprint (the SHA-256 of
the checkpoint's arrays that `checkpointing` stores with every save).

Calibrations made before this record existed ("fitted_on" absent) still
load: the checkpoint step and alignment they did record are compared (a
mismatch is refused), and a warning says that the weights and input size
cannot be verified.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from cmfl_jax.verdicts.store import CalibrationError

#: Changes whenever decoding or cropping changes the pixels a model sees.
PREPROCESSING = "tf.image decode (first frame), ops.resize_and_crop, RGB uint8 (v1)"
KEY = "fitted_on"


def fitted_on(meta: Mapping[str, Any], checkpoint: str, image_size: int,
              framing_aligned: bool | None, align: bool | None) -> dict[str, Any]:
  """The record: `meta` is the checkpoint's metadata (its "fingerprint"),
  `checkpoint` its name ("best_120"), `framing_aligned` the input crop
  (`ops.Geometry.aligned`), `align` whether faces are detected and aligned
  first. None: not known here (at export the user crops at use), not compared."""
  out = {"weights": meta.get("fingerprint"), "checkpoint": checkpoint,
         "image_size": int(image_size), "preprocessing": PREPROCESSING}
  if framing_aligned is not None:
    out["framing"] = "aligned" if framing_aligned else "centre_crop"
  if align is not None:
    out["align"] = bool(align)
  return out


def _describe(record: Mapping[str, Any]) -> str:
  weights = record.get("weights")
  parts = [f"checkpoint {record.get('checkpoint')}",
           f"weights {weights[:12] if weights else 'unknown'}",
           f"{record.get('image_size')} px"]
  if "framing" in record:
    parts.append(f"framing {record['framing']}")
  if "align" in record:
    parts.append("--align" if record["align"] else "no --align")
  return ", ".join(parts)


def _step(checkpoint: Any) -> str | None:
  return str(checkpoint).rsplit("_", 1)[-1] if checkpoint else None


def check(calibration: Mapping[str, Any], current: Mapping[str, Any], name: str | None) -> None:
  """Raises CalibrationError (one line naming both) unless `calibration` was
  fitted on what `current` (`fitted_on`) describes; keys `current` lacks
  are not compared. A calibration without a record: see the module doc."""
  label = f"calibration {name or calibration.get('name')!r}"
  recorded = calibration.get(KEY)
  if not recorded:
    old = {"checkpoint": calibration.get("checkpoint"), "align": calibration.get("aligned_faces")}
    mismatch = (_step(old["checkpoint"]) not in (None, _step(current.get("checkpoint")))
                or ("align" in current and old["align"] is not None
                    and bool(old["align"]) != current["align"]))
    if mismatch:
      raise CalibrationError(
          f"{label} was made for checkpoint {old['checkpoint']} "
          f"({'--align' if old['align'] else 'no --align'}), not for {_describe(current)}: "
          "make one for this model with python -m cmfl_jax.calibrate")
    logging.warning("%s predates calibration fingerprints: it cannot be verified that it was "
                    "made for %s; its guarantee holds only if it was. Remake it "
                    "(python -m cmfl_jax.calibrate --overwrite) to have it checked.",
                    label, _describe(current))
    return
  keys = [k for k in ("weights", "image_size", "framing", "align", "preprocessing")
          if k in current and current[k] is not None]
  if any(recorded.get(k) != current[k] for k in keys):
    decoding = ("" if recorded.get("preprocessing") == current.get("preprocessing") else
                f" (decoding {recorded.get('preprocessing')!r}, now {current['preprocessing']!r})")
    raise CalibrationError(
        f"{label} was fitted on {_describe(recorded)}, but is applied to "
        f"{_describe(current)}{decoding}: its false-alarm guarantee does not hold there; make one for "
        "this model with python -m cmfl_jax.calibrate")
