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
