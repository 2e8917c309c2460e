"""The verdict on one image, from its scores.

`decide` is the single place a verdict is made, so the three-way verdicts of
issue #29 ("unsure" from a dev-fitted band and a stability check) can replace
it without touching the server. Until then: one threshold on the joint
head's P(real).
"""

from __future__ import annotations

import dataclasses

VERDICTS = ("real", "synthetic", "unsure")

MEANING = {
    "real": "the model finds a bona fide (camera) face more likely than a synthetic one",
    "synthetic": "the model finds a GAN/diffusion-generated face more likely than a real one",
    "unsure": "the score is too close to the threshold to call",
}


@dataclasses.dataclass(frozen=True)
class Policy:
  """The cut on P(real) and where it came from ("dev_eer", "calibration:NAME",
  "default_0.5")."""

  threshold: float
  source: str

  def decide(self, scores: dict[str, float]) -> tuple[str, str]:
    """(verdict, reason) from {"p_real": ..., other heads ...}."""
    p = scores["p_real"]
    verdict = "real" if p >= self.threshold else "synthetic"
    sign = ">=" if verdict == "real" else "<"
    return verdict, f"p_real {p:.4f} {sign} threshold {self.threshold:.4f} ({self.source})"
