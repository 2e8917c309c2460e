"""Verdicts a person can act on: `real`, `synthetic` or `unsure`.

* `conformal`: a threshold from the user's own bona fide images with a
  finite-sample guarantee on the false-alarm rate;
* `selective`: the `unsure` band around it, fitted on the dev split to a
  target error, and risk-coverage curves;
* `stability`: a verdict that flips under a JPEG save or a small resize is
  `unsure`;
* `store`: named calibrations in `<workdir>/calibrations/<name>.json`;
* `binding`: what a calibration was fitted on, checked wherever it is used.

The public API other commands use: `load_calibration`, `rule`, `decide`.
"""

from __future__ import annotations

from typing import Any, Mapping

from cmfl_jax.verdicts import binding, conformal, selective, store
from cmfl_jax.verdicts.store import CalibrationError

REAL, SYNTHETIC, UNSURE = "real", "synthetic", "unsure"
#: The stability conditions predict, the service and an export's predict
#: re-score every image under by default (`stability`).
STABILITY = ("jpeg:95", "resize:0.9")


def load_calibration(workdir: str, name: str) -> dict[str, Any]:
  """The named calibration of `workdir`: "threshold" (P(real) below it is
  synthetic), its guarantee, and the dev-fitted "band" if one was fitted."""
  return store.load(workdir, name)


def rule(meta: Mapping[str, Any], chosen: Mapping[str, Any] | None = None,
         name: str | None = None, using: Mapping[str, Any] | None = None
         ) -> tuple[float | None, dict[str, Any] | None, str]:
  """Which threshold and unsure band decide, the same for predict and the
  service: a named calibration (`chosen`, called `name`), else the one an
  exported model carries (`meta["chosen_calibration"]`), else the dev EER
  threshold and band stored with the checkpoint, else none (0.5 is used).
  Returns (threshold or None, band or None, source: "calibration:NAME",
  "dev_eer" or "default_0.5"). `using` (`binding.fitted_on`): the model and
  input the verdicts are for; a calibration fitted on anything else raises
  CalibrationError."""
  if not chosen and meta.get("chosen_calibration"):
    chosen = meta["chosen_calibration"]
    name = chosen.get("name")
  if chosen:
    if using is not None:
      binding.check(chosen, using, name)
    return float(chosen["threshold"]), chosen.get("band"), f"calibration:{name}"
  dev = meta.get("dev_threshold")
  if dev is None:
    return None, None, "default_0.5"
  return float(dev), meta.get("unsure_band"), "dev_eer"


def decide(p_real: float, threshold: float, band: dict[str, Any] | None = None,
           unstable: str | None = None, unsupported: str | None = None) -> tuple[str, str]:
  """(verdict, reason) for one score. Unsure, in this order, when the input
  cannot support a verdict (`unsupported`, e.g. "face too small (12 px)"),
  when the verdict flips under mild post-processing (`unstable`: the
  reason), or when the score lies in the dev-fitted `band`; otherwise real
  if p_real >= threshold (>= band["hi"] with a band), else synthetic, with
  the comparison that decided as the reason (every verdict has one)."""
  if unsupported:
    return UNSURE, unsupported
  if unstable:
    return UNSURE, unstable
  if band is not None and band["lo"] <= p_real < band["hi"]:
    return UNSURE, (f"score in the unsure band [{band['lo']:.3f}, {band['hi']:.3f}) "
                    f"(dev error target {band['target_error']:g})")
  if band is not None:
    return ((REAL, f"score {p_real:.4f} >= {band['hi']:.4f}, the top of the unsure band")
            if p_real >= threshold else
            (SYNTHETIC, f"score {p_real:.4f} < {band['lo']:.4f}, the bottom of the unsure band"))
  return ((REAL, f"score {p_real:.4f} >= threshold {threshold:.4f}") if p_real >= threshold else
          (SYNTHETIC, f"score {p_real:.4f} < threshold {threshold:.4f}"))


__all__ = ["CalibrationError", "binding", "REAL", "STABILITY", "SYNTHETIC", "UNSURE", "conformal",
           "decide",
           "load_calibration", "rule", "selective", "store"]
