"""Thresholds with a finite-sample guarantee on the false-alarm rate, from a
user's own bona fide images (split conformal / order statistics).

A false alarm is a bona fide image called synthetic: its score P(real) falls
below the threshold t. With n calibration scores of bona fide images from one
source, t is the k-th smallest of them, and for a new image exchangeable with
them (same source, drawn the same way):

* "marginal" (split conformal), k = floor(alpha (n + 1)):
  P(score < t) <= k / (n + 1) <= alpha, the probability taken over the
  calibration images and the new image together; with no tied scores it is
  exactly k / (n + 1) > alpha - 1 / (n + 1).
* "pac" (confidence 1 - delta), k = the largest with
  P(Binomial(n, alpha) <= k - 1) <= delta: with probability >= 1 - delta over
  the calibration images, the false-alarm rate of the threshold itself
  (over new images) is <= alpha. Needs more images than "marginal".

Nothing is assumed about the detector or about the distribution of scores;
everything rests on exchangeability: images from another camera, another
processing chain or a drifting source are not covered.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

KINDS = ("marginal", "pac")


class NotEnoughImages(ValueError):
  """The requested false-alarm rate cannot be guaranteed with this many images."""


def images_needed(alpha: float, delta: float | None = None) -> int:
  """Smallest n for which a threshold with the guarantee exists."""
  _check(alpha, delta)
  if delta is None:  # floor(alpha (n + 1)) >= 1
    return max(1, math.ceil(1.0 / alpha - 1e-12) - 1)
  # k = 1 needs P(Binomial(n, alpha) = 0) = (1 - alpha)^n <= delta.
  return math.ceil(math.log(delta) / math.log1p(-alpha) - 1e-12)


def _check(alpha: float, delta: float | None) -> None:
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"false-alarm rate must be in (0, 1), got {alpha}")
  if delta is not None and not 0.0 < delta < 1.0:
    raise ValueError(f"confidence delta must be in (0, 1), got {delta}")


def order_statistic(n: int, alpha: float, delta: float | None = None) -> int:
  """k (1-based) of the k-th smallest calibration score; 0 if none works."""
  _check(alpha, delta)
  if delta is None:
    return int(math.floor(alpha * (n + 1) + 1e-12))
  ks = np.arange(1, n + 1)
  ok = scipy_stats.binom.cdf(ks - 1, n, alpha) <= delta
  return int(ks[ok].max()) if ok.any() else 0


def threshold(real_scores: np.ndarray, alpha: float, delta: float | None = None
              ) -> dict[str, Any]:
  """The threshold and its guarantee: {"threshold", "k", "n", "false_alarm",
  "delta", "kind", "bound", "guarantee"}; images scoring below the threshold
  are called synthetic. Raises `NotEnoughImages` (with the count needed)
  when no order statistic gives the guarantee."""
  scores = np.sort(np.asarray(real_scores, np.float64).reshape(-1))
  if not np.all(np.isfinite(scores)):
    raise ValueError("calibration scores must be finite")
  n = len(scores)
  k = order_statistic(n, alpha, delta)
  if k < 1:
    need = images_needed(alpha, delta)
    how = f" at confidence {1 - delta:g}" if delta is not None else ""
    raise NotEnoughImages(f"{n} bona fide images cannot guarantee a false-alarm rate of "
                          f"{alpha:g}{how}: at least {need} are needed")
  kind = "marginal" if delta is None else "pac"
  return {"threshold": float(scores[k - 1]), "k": k, "n": n, "false_alarm": alpha,
          "delta": delta, "kind": kind,
          "bound": k / (n + 1) if delta is None else alpha,
          "guarantee": describe(kind, alpha, delta, k, n)}


def describe(kind: str, alpha: float, delta: float | None, k: int, n: int) -> str:
  """The guarantee in one sentence."""
  if kind == "marginal":
    return (f"for a new bona fide image from the same source, P(called synthetic) <= "
            f"{k}/{n + 1} = {k / (n + 1):.4f} <= {alpha:g} (marginal, over calibration "
            f"and new image)")
  return (f"with probability >= {1 - delta:g} over the {n} calibration images, the "
          f"false-alarm rate on new bona fide images from the same source is <= {alpha:g}")
