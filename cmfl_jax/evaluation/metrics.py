"""Detection metrics in ISO/IEC 30107-3 terms. Label 1 = bona fide, score = P(real);
an image is accepted as bona fide when score >= threshold.

APCER: attacks accepted as bona fide. BPCER: bona fide rejected.
"""

from __future__ import annotations

import numpy as np


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels).astype(int).ravel()
  scores = np.asarray(scores, np.float64).ravel()
  if labels.shape != scores.shape:
    raise ValueError(f"{labels.size} labels but {scores.size} scores")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contain NaN or inf")
  if not np.isin(labels, (0, 1)).all():
    raise ValueError("labels must be 0 (attack) or 1 (bona fide)")
  if labels.min() == labels.max():
    missing = "attack (0)" if labels.min() == 1 else "bona fide (1)"
    raise ValueError(f"metrics need both classes; no {missing} examples")
  return labels, scores


def error_rates(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(thresholds, APCER, BPCER) at every distinct score plus one above all.

  Thresholds ascend; APCER falls from 1 to 0 and BPCER rises from 0 to 1.
  """
  labels, scores = _check(labels, scores)
  thr = np.unique(scores)
  thr = np.append(thr, np.nextafter(thr[-1], np.inf))
  att = np.sort(scores[labels == 0])
  bon = np.sort(scores[labels == 1])
  apcer = 1.0 - np.searchsorted(att, thr, side="left") / att.size   # attacks with score >= t
  bpcer = np.searchsorted(bon, thr, side="left") / bon.size          # bona fide with score < t
  return thr, apcer, bpcer


def eer(labels, scores) -> tuple[float, float]:
  """(D-EER, threshold): where APCER = BPCER, linearly interpolated between
  neighbouring thresholds. All-equal scores give (0.5, that score)."""
  thr, apcer, bpcer = error_rates(labels, scores)
  d = apcer - bpcer
  k = int(np.argmax(d <= 0))  # first threshold with BPCER >= APCER (d[-1] = -1 always)
  if k == 0 or d[k] == 0:
    return float((apcer[k] + bpcer[k]) / 2), float(thr[k])
  a = d[k - 1] / (d[k - 1] - d[k])
  rate = apcer[k - 1] + a * (apcer[k] - apcer[k - 1])
  return float(rate), float(thr[k - 1] + a * (thr[k] - thr[k - 1]))


def roc_auc(labels, scores) -> float:
  """P(score of a bona fide > score of an attack), ties counted half."""
  labels, scores = _check(labels, scores)
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(scores.size)
  sorted_scores = scores[order]
  # Average ranks over ties.
  _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  avg = start + (counts - 1) / 2.0 + 1
  ranks[order] = np.repeat(avg, counts)
  n1, n0 = int(labels.sum()), int((1 - labels).sum())
  return float((ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def average_precision(labels, scores) -> float:
  """Average precision with bona fide as the positive class (sklearn's definition:
  sum over thresholds of (R_n - R_{n-1}) * P_n, no interpolation)."""
  labels, scores = _check(labels, scores)
  order = np.argsort(-scores, kind="mergesort")
  s, y = scores[order], labels[order]
  last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last index of each distinct score
  tp = np.cumsum(y)[last]
  precision = tp / (last + 1)
  recall = tp / y.sum()
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def rates_at_threshold(labels, scores, threshold: float) -> tuple[float, float]:
  """(APCER, BPCER) when accepting score >= threshold as bona fide."""
  labels, scores = _check(labels, scores)
  accept = scores >= threshold
  return float(accept[labels == 0].mean()), float((~accept[labels == 1]).mean())


def bpcer_at_apcer(labels, scores, apcer_target: float) -> float:
  """Lowest BPCER over thresholds whose APCER <= target (ISO: BPCER@APCER=x)."""
  _, apcer, bpcer = error_rates(labels, scores)
  return float(bpcer[apcer <= apcer_target + 1e-12].min())


def apcer_at_bpcer(labels, scores, bpcer_target: float) -> float:
  """Lowest APCER over thresholds whose BPCER <= target."""
  _, apcer, bpcer = error_rates(labels, scores)
  return float(apcer[bpcer <= bpcer_target + 1e-12].min())


def summary(labels, scores, dev_threshold: float | None = None) -> dict[str, float]:
  """All headline numbers for one evaluation set (fractions, not percent)."""
  eer_rate, eer_thr = eer(labels, scores)
  out = {"d_eer": eer_rate, "eer_threshold": eer_thr, "auc": roc_auc(labels, scores),
         "average_precision": average_precision(labels, scores)}
  for t in (0.01, 0.05, 0.10):
    out[f"bpcer@apcer={t:g}"] = bpcer_at_apcer(labels, scores, t)
    out[f"apcer@bpcer={t:g}"] = apcer_at_bpcer(labels, scores, t)
  out["apcer@0.5"], out["bpcer@0.5"] = rates_at_threshold(labels, scores, 0.5)
  if dev_threshold is not None:
    out["dev_threshold"] = dev_threshold
    out["apcer@dev"], out["bpcer@dev"] = rates_at_threshold(labels, scores, dev_threshold)
  return out
