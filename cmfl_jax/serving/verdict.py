"""The verdict on one image, from its scores.

`Policy.decide` is the single place the service makes a verdict: the three
verdicts of `cmfl_jax.verdicts` (real, synthetic, or unsure in the unsure
band fitted on the dev split around the threshold). The stability check of
predict (rescoring under a JPEG save and a resize) is not applied per
request: it would triple the cost of every request.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cmfl_jax import verdicts

VERDICTS = ("real", "synthetic", "unsure")

MEANING = {
    "real": "the model finds a bona fide (camera) face more likely than a synthetic one",
    "synthetic": "the model finds a GAN/diffusion-generated face more likely than a real one",
    "unsure": "the score is in the band where the model errs too often to call it",
}


@dataclasses.dataclass(frozen=True)
class Policy:
  """The cut on P(real), where it came from ("dev_eer", "calibration:NAME",
  "default_0.5"), and the unsure band around it (None: no band)."""

  threshold: float
  source: str
  band: dict[str, Any] | None = None

  def decide(self, scores: dict[str, float]) -> tuple[str, str]:
    """(verdict, reason) from {"p_real": ..., other heads ...}."""
    p = scores["p_real"]
    verdict, reason = verdicts.decide(p, self.threshold, self.band)
    if verdict != verdicts.UNSURE:
      sign = ">=" if verdict == verdicts.REAL else "<"
      reason = f"p_real {p:.4f} {sign} threshold {self.threshold:.4f} ({self.source})"
    return verdict, reason
