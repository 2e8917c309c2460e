"""The `unsure` band: scores too close to the threshold get no verdict, so
that the images that do get one meet a target error rate (selective
classification), and the risk-coverage view of it.

The band [lo, hi) contains the threshold t; an image is called synthetic if
its score < lo, real if >= hi, unsure otherwise. It is fitted on labelled dev
scores: among the bands whose error on the covered dev images is <= the
target, the one covering the most images. The fit is on dev data, so the
error on other data is an estimate, not a guarantee; the report measures it
per split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_CANDIDATES = 1024  # per side: an O(candidates^2) search, on quantiles for large dev sets


def _candidates(sorted_scores: np.ndarray) -> np.ndarray:
  """How many dev scores each side may keep: only counts that end a group of
  tied scores (a band edge cannot split a tie: every image with the same
  score gets the same verdict), all of them or a quantile grid of them."""
  m = len(sorted_scores)
  cuts = np.concatenate([[0], np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1, [m]])
  cuts = np.unique(cuts)
  if len(cuts) <= MAX_CANDIDATES:
    return cuts
  return cuts[np.unique(np.round(np.linspace(0, len(cuts) - 1, MAX_CANDIDATES)).astype(int))]


def fit_band(labels: np.ndarray, scores: np.ndarray, threshold: float,
             target_error: float) -> dict[str, Any]:
  """{"lo", "hi", "target_error", "dev_coverage", "dev_error", "dev_examples"}:
  the widest-coverage band around `threshold` whose selective error on
  these (dev) scores is <= target_error. Labels: 1 = bona fide."""
  if not 0.0 <= target_error < 1.0:
    raise ValueError(f"target error must be in [0, 1), got {target_error}")
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  low = scores < threshold
  order_low = np.argsort(scores[low], kind="stable")       # ascending: keep a prefix
  order_high = np.argsort(-scores[~low], kind="stable")    # descending: keep a prefix
  low_scores, low_labels = scores[low][order_low], labels[low][order_low]
  high_scores, high_labels = scores[~low][order_high], labels[~low][order_high]
  # Errors: bona fide called synthetic (below lo), attacks called real (>= hi).
  err_low = np.concatenate([[0], np.cumsum(low_labels == 1)])
  err_high = np.concatenate([[0], np.cumsum(high_labels != 1)])
  a, b = _candidates(low_scores), _candidates(high_scores)
  covered = a[:, None] + b[None, :]
  errors = err_low[a][:, None] + err_high[b][None, :]
  ok = errors <= target_error * covered + 1e-9
  coverage = np.where(ok, covered, -1)
  best = np.unravel_index(np.argmax(coverage), coverage.shape)  # ties: the narrowest band
  ka, kb = int(a[best[0]]), int(b[best[1]])
  n = len(scores)
  # lo: the smallest dev score left out below (t if none); hi: the smallest kept above.
  lo = float(low_scores[ka]) if ka < len(low_scores) else float(threshold)
  # Both edges fall between groups of tied scores (`_candidates`), so the
  # band gives exactly the kept images a verdict.
  hi = float(high_scores[kb - 1]) if kb > 0 else float(np.nextafter(max(1.0, threshold), 2.0))
  kept = ka + kb
  return {"lo": lo, "hi": max(hi, float(threshold)), "threshold": float(threshold),
          "target_error": float(target_error), "dev_examples": int(n),
          "dev_coverage": kept / max(n, 1),
          "dev_error": float(errors[best]) / kept if kept else 0.0}


def verdicts(scores: np.ndarray, band: dict[str, Any]) -> np.ndarray:
  """Per score: 1 (real), 0 (synthetic) or -1 (unsure)."""
  scores = np.asarray(scores, np.float64)
  return np.where(scores >= band["hi"], 1, np.where(scores < band["lo"], 0, -1))


def summary(labels: np.ndarray, scores: np.ndarray, band: dict[str, Any]) -> dict[str, Any]:
  """Share unsure, and the error (and its parts) on the images given a verdict."""
  labels = np.asarray(labels).reshape(-1)
  v = verdicts(scores, band)
  given = v >= 0
  wrong = given & (v != (labels == 1))
  real, attack = labels == 1, labels != 1
  return {"unsure_share": float(np.mean(~given)) if len(v) else 0.0,
          "coverage": float(np.mean(given)) if len(v) else 0.0,
          "selective_error": float(wrong.sum() / given.sum()) if given.any() else 0.0,
          "false_alarm": float(np.mean(v[real] == 0)) if real.any() else None,
          "missed_attack": float(np.mean(v[attack] == 1)) if attack.any() else None,
          "examples": int(len(v))}


def risk_coverage(labels: np.ndarray, scores: np.ndarray, threshold: float,
                  points: int = 101) -> dict[str, list[float]]:
  """The risk-coverage curve of abstaining on the scores nearest the
  threshold (in logit distance): at each coverage, the error on the covered
  images. `points` coverages from 1/n to 1."""
  labels = np.asarray(labels).reshape(-1)
  p = np.clip(np.asarray(scores, np.float64), 1e-7, 1 - 1e-7)
  t = float(np.clip(threshold, 1e-7, 1 - 1e-7))
  distance = np.abs(np.log(p / (1 - p)) - np.log(t / (1 - t)))
  order = np.argsort(-distance, kind="stable")
  wrong = ((p[order] >= threshold) != (labels[order] == 1)).astype(np.float64)
  n = len(order)
  if n == 0:
    return {"coverage": [], "risk": []}
  counts = np.unique(np.clip(np.round(np.linspace(1, n, points)).astype(int), 1, n))
  risk = np.cumsum(wrong)[counts - 1] / counts
  return {"coverage": (counts / n).tolist(), "risk": risk.tolist()}


def report_entry(labels: np.ndarray, scores: np.ndarray, threshold: float | None,
                 band: dict[str, Any] | None) -> dict[str, Any]:
  """A split's verdict numbers for metrics.json: with a band, the share
  unsure and the error on the images given a verdict; always the
  risk-coverage curve around the threshold (0.5 if none)."""
  out: dict[str, Any] = {"threshold": 0.5 if threshold is None else float(threshold),
                         "risk_coverage": risk_coverage(labels, scores,
                                                        0.5 if threshold is None else threshold)}
  if band:
    out.update(band=band, **summary(labels, scores, band))
  return out
