"""Results you can trust: bootstrap intervals, calibration, operating points that
transfer between splits, and multi-seed significance tests.

Conventions are those of `cmfl_jax.evaluation.metrics`: label 1 = bona fide, score = P(real),
accepted as bona fide when score >= threshold; APCER = attacks accepted, BPCER =
bona fide rejected; every rate is a fraction, not a percent.

How the bootstrap is fast: the pooled scores are sorted (grouped into distinct
values) once; a resample is a vector of multinomial counts per distinct score and
class, so every resample's APCER/BPCER curve is a cumulative sum over the same
sorted grid, and D-EER, AUC, AP and the operating points follow from the curves
for all resamples at once (in chunks of rows to bound memory). Groups that a
resample leaves empty only repeat a curve point, which changes no metric, so the
numbers are exactly those of `evaluation.metrics` on the resampled data.

Measured: 10,000 distinct scores x 1000 resamples, every `summary` metric plus two
fixed thresholds: 0.54-0.68 s (3 runs, one thread, on a shared 2-core machine) with
  cd /work/main && OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python -c \
    "import time, numpy as np; from cmfl_jax import stats; r = np.random.default_rng(0); \
y = r.integers(0, 2, 10000); s = r.normal(y * 1.5, 1); t = time.perf_counter(); \
stats.bootstrap_summary(y, s, {'0.5': 0.5, 'dev': 0.5}); print(time.perf_counter() - t)"
"""

from __future__ import annotations

import math
from typing import Any, Collection, Mapping, Sequence

import numpy as np
from scipy import optimize, sparse, special

from cmfl_jax.evaluation import metrics

# Operating-point targets reported by `metrics.summary`.
SUMMARY_TARGETS = (0.01, 0.05, 0.10)
# Fixed thresholds reported by `metrics.summary` (key suffix -> threshold).
SUMMARY_THRESHOLDS = {"0.5": 0.5}
# Rows x grid points per chunk of the vectorised computation (float64: 16 MiB each).
_CHUNK_ELEMENTS = 1 << 21
_EPS = 1e-12  # the same slack metrics.py allows on operating-point targets


# ----------------------------------------------------------------------------------
# Metrics for many weightings of one score set at once.


def _group_metrics(u: np.ndarray, w0: np.ndarray, w1: np.ndarray,
                   targets: Sequence[float] = SUMMARY_TARGETS,
                   thresholds: Mapping[str, float] | None = None,
                   want: Collection[str] | None = None) -> dict[str, np.ndarray]:
  """Every `metrics.summary` number for each row of per-group class weights.

  u: [m] (shared) or [B, m] ascending group scores; w0 / w1: [B, m] attack / bona
  fide weight of each group. Zero-weight groups are allowed (a resample that
  misses a score): they only repeat a curve point. `want` limits the work to
  those keys. Fixed `thresholds` need a shared u.
  """
  b, m = w0.shape
  rows = np.arange(b)
  c0 = np.empty((b, m + 1))
  c1 = np.empty((b, m + 1))
  c0[:, 0] = c1[:, 0] = 0.0
  np.cumsum(w0, axis=1, out=c0[:, 1:])  # attack weight with score < threshold j
  np.cumsum(w1, axis=1, out=c1[:, 1:])  # bona fide weight with score < threshold j
  n0, n1 = c0[:, -1].copy(), c1[:, -1].copy()
  out: dict[str, np.ndarray] = {}

  def need(key: str) -> bool:
    return want is None or key in want

  # Everything that needs the cumulative weights comes first; then they become the
  # curves in place (fewer large temporaries: this loop is memory bound).
  if need("auc"):
    out["auc"] = (np.einsum("ij,ij->i", w1, c0[:, :-1])
                  + 0.5 * np.einsum("ij,ij->i", w1, w0)) / (n0 * n1)
  if need("average_precision"):
    tp = n1[:, None] - c1[:, :-1]                         # bona fide with score >= u_g
    pp = (n0 + n1)[:, None] - c0[:, :-1]                  # all with score >= u_g
    pp -= c1[:, :-1]
    np.divide(tp, pp, out=tp, where=w1 > 0)               # precision (finite tp kept where w1 = 0)
    out["average_precision"] = np.einsum("ij,ij->i", w1, tp) / n1
    del tp, pp
  for name, t in (thresholds or {}).items():
    if need(f"apcer@{name}") or need(f"bpcer@{name}"):
      j = int(np.searchsorted(u, t, side="left"))           # groups >= j are accepted
      out[f"apcer@{name}"] = (n0 - c0[:, j]) / n0
      out[f"bpcer@{name}"] = c1[:, j] / n1
  ctot = c0 + c1 if need("eer_threshold") else None
  # Thresholds j = 0..m are the group scores plus one above all, as metrics.error_rates.
  apcer = np.divide(c0, -n0[:, None], out=c0)
  apcer += 1.0  # = 1 - c0 / n0, bit for bit as metrics.error_rates
  bpcer = np.divide(c1, n1[:, None], out=c1)

  if need("d_eer") or need("eer_threshold"):
    k = np.argmax(apcer <= bpcer, axis=1)  # first threshold with APCER - BPCER <= 0
    kp = np.maximum(k - 1, 0)
    ap_k, bp_k = apcer[rows, k], bpcer[rows, k]
    ap_p, bp_p = apcer[rows, kp], bpcer[rows, kp]
    d_k, d_p = ap_k - bp_k, ap_p - bp_p
    direct = (k == 0) | (d_k == 0)
    a = np.where(direct, 0.0, d_p / np.where(direct, 1.0, d_p - d_k))
    out["d_eer"] = np.where(direct, (ap_k + bp_k) / 2, ap_p + a * (ap_k - ap_p))
  if need("eer_threshold"):
    # The resample's own threshold at grid index j is its first non-empty group
    # >= j, or just above its largest score; group k-1 is non-empty when used.
    ub = np.broadcast_to(u, (b, m))
    last = np.argmax(ctot >= ctot[:, -1:], axis=1) - 1        # last non-empty group
    nxt = np.argmax(ctot > ctot[rows, k][:, None], axis=1) - 1  # first non-empty >= k
    t_k = np.where(nxt >= 0, ub[rows, np.maximum(nxt, 0)], np.nextafter(ub[rows, last], np.inf))
    t_p = ub[rows, kp]
    out["eer_threshold"] = np.where(direct, t_k, t_p + a * (t_k - t_p))
  for t in targets:
    key = f"bpcer@apcer={t:g}"
    if need(key):  # BPCER is non-decreasing: the lowest is at the first allowed threshold
      out[key] = bpcer[rows, np.argmax(apcer <= t + _EPS, axis=1)]
    key = f"apcer@bpcer={t:g}"
    if need(key):  # APCER is non-increasing: the lowest is at the last allowed threshold
      out[key] = apcer[rows, np.count_nonzero(bpcer <= t + _EPS, axis=1) - 1]
  return out


def _check_thresholds(thresholds: Mapping[str, float] | None) -> dict[str, float]:
  out = dict(SUMMARY_THRESHOLDS if thresholds is None else thresholds)
  for name, t in out.items():
    if not isinstance(t, (int, float, np.floating, np.integer)) or math.isnan(t):
      raise ValueError(f"threshold {name!r} must be a number, got {t!r}")
  return {name: float(t) for name, t in out.items()}


def _check_resampling(n_resamples: int, confidence: float) -> None:
  if int(n_resamples) < 1:
    raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def weighted_summary(labels, scores, weights, thresholds: Mapping[str, float] | None = None,
                     targets: Sequence[float] = SUMMARY_TARGETS) -> dict[str, np.ndarray]:
  """`metrics.summary` numbers under frequency weights, one row per weighting.

  weights: [n] or [R, n], non-negative; integer weights w give exactly the metrics of
  the data with element i repeated w_i times (all ones: `metrics.summary` itself).
  Keys as `metrics.summary`, fixed thresholds as "apcer@<name>"/"bpcer@<name>"
  (default {"0.5": 0.5}); values are arrays of shape [R].
  """
  labels, scores = metrics._check(labels, scores)
  thresholds = _check_thresholds(thresholds)
  w = np.asarray(weights, np.float64)
  w = w[None] if w.ndim == 1 else w
  if w.ndim != 2 or w.shape[1] != scores.size:
    raise ValueError(f"weights must have shape [R, {scores.size}], got {np.shape(weights)}")
  if not np.all(np.isfinite(w)) or (w < 0).any():
    raise ValueError("weights must be finite and non-negative")
  if ((w[:, labels == 0].sum(1) <= 0) | (w[:, labels == 1].sum(1) <= 0)).any():
    raise ValueError("every weighting needs positive weight on both classes")
  u, g = np.unique(scores, return_inverse=True)
  m, n = u.size, scores.size
  # One-hot [n, 2m]: column g for attacks, m + g for bona fide.
  onehot = sparse.csr_matrix((np.ones(n), (np.arange(n), g + m * labels)), shape=(n, 2 * m))
  chunk = max(1, _CHUNK_ELEMENTS // max(m, n))
  parts = []
  for s in range(0, w.shape[0], chunk):
    wg = np.asarray(onehot.T @ w[s:s + chunk].T).T
    parts.append(_group_metrics(u, wg[:, :m], wg[:, m:], targets, thresholds))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ----------------------------------------------------------------------------------
# 1. Stratified bootstrap intervals.


def _offset_groups(groups: np.ndarray, drawn: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """groups[drawn] + offsets, flattened, in the drawn buffer (one large array, not three)."""
  np.take(groups, drawn, out=drawn)
  drawn += offsets
  return drawn.ravel()


def _bootstrap(labels: np.ndarray, scores: np.ndarray, thresholds: dict[str, float],
               targets: Sequence[float], n_resamples: int, seed: int,
               keys: Collection[str] | None = None
               ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """(values on the data, [n_resamples] samples per key), classes resampled apart."""
  u, g = np.unique(scores, return_inverse=True)
  m = u.size
  g0, g1 = g[labels == 0], g[labels == 1]
  n0, n1 = g0.size, g1.size
  ones = _group_metrics(u, np.bincount(g0, minlength=m)[None].astype(np.float64),
                        np.bincount(g1, minlength=m)[None].astype(np.float64),
                        targets, thresholds)
  if keys is not None:
    unknown = sorted(set(keys) - set(ones))
    if unknown:
      raise ValueError(f"unknown metric keys {unknown}; available: {sorted(ones)}")
    keys = frozenset(keys)
  values = {k: float(v[0]) for k, v in ones.items() if keys is None or k in keys}
  # One stream per class, so the draws do not depend on the chunk size.
  rng0, rng1 = np.random.default_rng(seed).spawn(2)
  chunk = max(1, _CHUNK_ELEMENTS // max(m, n0, n1))
  parts = []
  for s in range(0, n_resamples, chunk):
    c = min(chunk, n_resamples - s)
    off = (np.arange(c) * m)[:, None]
    # Drawn indices -> multinomial counts per (resample, group), per class.
    w0 = np.bincount(_offset_groups(g0, rng0.integers(0, n0, (c, n0)), off), minlength=c * m)
    w1 = np.bincount(_offset_groups(g1, rng1.integers(0, n1, (c, n1)), off), minlength=c * m)
    # Integer counts go in as they are (cumsum and einsum cast on the fly).
    parts.append(_group_metrics(u, w0.reshape(c, m), w1.reshape(c, m), targets, thresholds, keys))
  return values, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _interval(value: float, samples: np.ndarray, confidence: float) -> dict[str, float]:
  low, high = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
  return {"value": float(value), "low": float(low), "high": float(high)}


def bootstrap_summary(labels, scores, thresholds: Mapping[str, float] | None = None,
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                      targets: Sequence[float] = SUMMARY_TARGETS,
                      keys: Collection[str] | None = None) -> dict[str, dict[str, float]]:
  """Percentile bootstrap intervals for every `metrics.summary` number.

  Bona fide and attack scores are resampled separately with their sizes kept (the
  class balance of an evaluation set is a design choice, not noise). Returns
  {key: {"value", "low", "high"}}: "value" is the metric on the data (equal to
  `metrics.summary`), low/high the (1 - confidence)/2 and (1 + confidence)/2
  quantiles over resamples. Keys: d_eer, eer_threshold, auc, average_precision,
  bpcer@apcer=<t>, apcer@bpcer=<t> for t in targets, and apcer@<name>, bpcer@<name>
  for each fixed threshold (default {"0.5": 0.5}; pass {"0.5": 0.5, "dev": thr}
  for summary's apcer@dev/bpcer@dev). `keys` restricts the output (and the work)
  to those keys. Deterministic for a given seed.
  """
  labels, scores = metrics._check(labels, scores)
  thresholds = _check_thresholds(thresholds)
  _check_resampling(n_resamples, confidence)
  values, samples = _bootstrap(labels, scores, thresholds, tuple(targets), int(n_resamples),
                               seed, keys)
  return {k: _interval(values[k], samples[k], confidence) for k in values}


def format_interval(value: float, low: float, high: float, percent: bool = True,
                    digits: int | None = None) -> str:
  """Formats "value [low, high]" for tables; percent=True shows rates x 100 (2
  decimals by default, else 3)."""
  digits = (2 if percent else 3) if digits is None else digits
  scale = 100.0 if percent else 1.0
  return f"{value * scale:.{digits}f} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


# ----------------------------------------------------------------------------------
# 2. Calibration.


def fit_platt(labels, logits, platt_targets: bool = True, max_slope: float = 100.0
              ) -> dict[str, Any]:
  """Platt scaling P(real) = sigmoid(a * logit + b), a > 0, fitted on dev data.

  Maximum likelihood (L-BFGS-B) on standardised logits. a is kept positive so the
  ranking, and hence AUC and D-EER, cannot change. Separable data would push a to
  infinity; Platt's smoothed targets ((N+ + 1)/(N+ + 2) and 1/(N- + 2) instead of
  1 and 0) keep the optimum finite, and the slope per logit standard deviation is
  bounded by max_slope as a backstop. Returns a JSON-serialisable dict.
  """
  labels, x = metrics._check(labels, logits)
  n1 = int(labels.sum())
  n0 = labels.size - n1
  t = labels.astype(np.float64)
  if platt_targets:
    t = np.where(labels == 1, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))
  mu, sd = float(x.mean()), float(x.std())
  sd = sd if sd > 0 else 1.0
  z = (x - mu) / sd

  def nll(p: np.ndarray) -> tuple[float, np.ndarray]:
    f = p[0] * z + p[1]
    r = special.expit(f) - t
    return float(np.mean(np.logaddexp(0.0, f) - t * f)), np.array([np.mean(r * z), np.mean(r)])

  prior = float(np.clip(t.mean(), 1e-6, 1 - 1e-6))
  res = optimize.minimize(nll, np.array([1.0, math.log(prior / (1 - prior))]), jac=True,
                          method="L-BFGS-B", bounds=[(1e-6, max_slope), (None, None)],
                          options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 1000})
  a_std, b_std = float(res.x[0]), float(res.x[1])
  return {"a": a_std / sd, "b": b_std - a_std * mu / sd, "method": "platt"}


def apply_calibration(params: Mapping[str, Any], logits) -> np.ndarray:
  """Calibrated P(real) for logits. Order-preserving (a > 0); note that float64
  sigmoid saturates to exactly 0 or 1 beyond |a*logit + b| ~ 37, which would tie
  extreme scores."""
  if params.get("method") != "platt":
    raise ValueError(f"unknown calibration method {params.get('method')!r}")
  a, b = float(params["a"]), float(params["b"])
  if not a > 0:
    raise ValueError(f"Platt slope must be > 0 to keep the ranking, got {a}")
  x = np.asarray(logits, np.float64)
  if not np.all(np.isfinite(x)):
    raise ValueError("logits contain NaN or inf")
  return special.expit(a * x + b)


def _check_probs(labels, probs) -> tuple[np.ndarray, np.ndarray]:
  y = np.asarray(labels).astype(int).ravel()
  p = np.asarray(probs, np.float64).ravel()
  if y.shape != p.shape or p.size == 0:
    raise ValueError(f"{y.size} labels but {p.size} probabilities (need the same, > 0)")
  if not np.all(np.isfinite(p)):
    raise ValueError("probabilities contain NaN or inf")
  if (p < 0).any() or (p > 1).any():
    raise ValueError("probabilities must lie in [0, 1]")
  if not np.isin(y, (0, 1)).all():
    raise ValueError("labels must be 0 (attack) or 1 (bona fide)")
  return y, p


def reliability_curve(labels, probs, n_bins: int = 15) -> dict[str, np.ndarray]:
  """Per-bin mean predicted P(real), observed bona fide frequency and count.

  Bins are equal-width over [0, 1]: bin i holds edges[i] <= p < edges[i+1], the
  last bin also p = 1. Empty bins have NaN mean and frequency, count 0.
  """
  y, p = _check_probs(labels, probs)
  if int(n_bins) < 1:
    raise ValueError(f"n_bins must be >= 1, got {n_bins}")
  edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
  idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
  count = np.bincount(idx, minlength=n_bins)
  sum_p = np.bincount(idx, weights=p, minlength=n_bins)
  sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_p = np.where(count > 0, sum_p / count, np.nan)
    freq = np.where(count > 0, sum_y / count, np.nan)
  return {"mean_predicted": mean_p, "observed_frequency": freq, "count": count,
          "bin_edges": edges}


def expected_calibration_error(labels, probs, n_bins: int = 15) -> float:
  """ECE = sum over bins of (count / N) * |mean P(real) - bona fide frequency|, with
  the equal-width bins of `reliability_curve` (one class alone is allowed)."""
  curve = reliability_curve(labels, probs, n_bins)
  c = curve["count"]
  gap = np.abs(curve["mean_predicted"] - curve["observed_frequency"])
  return float(np.sum(np.where(c > 0, gap, 0.0) * c) / c.sum())


# ----------------------------------------------------------------------------------
# 3. Operating points fixed on dev, applied elsewhere.


def dev_operating_points(labels, scores, apcer_targets: Sequence[float] = (0.01, 0.05),
                         bpcer_targets: Sequence[float] = (0.01, 0.05)) -> dict[str, float]:
  """Thresholds fixed on the dev set, to apply unchanged to other splits.

  "eer": the interpolated threshold of `metrics.eer`. "apcer_<x>" (x in percent):
  the smallest threshold of `metrics.error_rates` (a dev score, or one just above
  the largest) with APCER <= x, i.e. the one that attains BPCER@APCER=x on dev.
  "bpcer_<x>": the largest such threshold with BPCER <= x (attains APCER@BPCER=x).
  """
  thr, apcer, bpcer = metrics.error_rates(labels, scores)
  out = {"eer": metrics.eer(labels, scores)[1]}
  for t in apcer_targets:
    out[f"apcer_{100 * t:g}"] = float(thr[np.argmax(apcer <= t + _EPS)])
  for t in bpcer_targets:
    out[f"bpcer_{100 * t:g}"] = float(thr[np.count_nonzero(bpcer <= t + _EPS) - 1])
  return out


def evaluate_operating_points(labels, scores, thresholds: Mapping[str, float],
                              n_resamples: int = 1000, confidence: float = 0.95,
                              seed: int = 0, flag_ratio: float = 2.0,
                              flag_margin: float = 0.05) -> dict[str, Any]:
  """APCER/BPCER with bootstrap intervals at fixed (dev) thresholds on another split.

  Also reports the split's own D-EER and AUC. When thresholds has "eer", the
  error there, HTER = (APCER + BPCER) / 2, is compared with the split's own D-EER:
  if HTER > flag_ratio * D-EER and HTER - D-EER > flag_margin (fractions; default
  2x and 5 points) the split "ranks well but is miscalibrated": its scores still
  separate the classes, but the dev threshold no longer sits at the crossing.
  """
  labels, scores = metrics._check(labels, scores)
  thresholds = _check_thresholds(thresholds)
  _check_resampling(n_resamples, confidence)
  values, samples = _bootstrap(labels, scores, thresholds, (), int(n_resamples), seed)
  iv = {k: _interval(values[k], samples[k], confidence) for k in values}
  out: dict[str, Any] = {
      "points": {name: {"threshold": t, "apcer": iv[f"apcer@{name}"],
                        "bpcer": iv[f"bpcer@{name}"]} for name, t in thresholds.items()},
      "d_eer": iv["d_eer"], "auc": iv["auc"]}
  if "eer" in thresholds:
    hter = (samples["apcer@eer"] + samples["bpcer@eer"]) / 2
    h = (values["apcer@eer"] + values["bpcer@eer"]) / 2
    own = values["d_eer"]
    flagged = bool(h > flag_ratio * own and h - own > flag_margin)
    words = (f"ranks well but miscalibrated: error at the dev EER threshold is {h:.1%} "
             f"(APCER {values['apcer@eer']:.1%}, BPCER {values['bpcer@eer']:.1%}) against "
             f"its own D-EER {own:.1%}; the dev threshold does not transfer"
             if flagged else
             f"dev EER threshold transfers: error {h:.1%} against own D-EER {own:.1%}")
    out["eer_transfer"] = {"hter": _interval(h, hter, confidence), "own_d_eer": own,
                           "miscalibrated": flagged, "message": words}
  return out


# ----------------------------------------------------------------------------------
# 4. Multi-seed comparisons.


def _batch_metric(x: np.ndarray, labels: np.ndarray, metric: str,
                  targets: Sequence[float]) -> np.ndarray:
  """metric(labels, x[i]) for every row of x [B, n] (unit weights), vectorised."""
  b, n = x.shape
  order = np.argsort(x, axis=1, kind="stable")
  xs = np.take_along_axis(x, order, axis=1)
  y = labels[order].astype(np.float64)
  start = np.ones((b, n), bool)
  start[:, 1:] = xs[:, 1:] != xs[:, :-1]
  # Every element adds to the first position of its tie group; the rest stay empty.
  first = np.maximum.accumulate(np.where(start, np.arange(n), 0), axis=1)
  flat = (first + (np.arange(b) * n)[:, None]).ravel()
  w1 = np.bincount(flat, weights=y.ravel(), minlength=b * n).reshape(b, n)
  w0 = np.bincount(flat, weights=1.0 - y.ravel(), minlength=b * n).reshape(b, n)
  return _group_metrics(xs, w0, w1, targets, want=(metric,))[metric]


def _parse_metric(metric: str) -> tuple[str, tuple[float, ...]]:
  """(canonical key, operating-point targets it needs)."""
  for prefix in ("bpcer@apcer=", "apcer@bpcer="):
    if metric.startswith(prefix):
      try:
        t = float(metric[len(prefix):])
      except ValueError:
        break
      return f"{prefix}{t:g}", (t,)
  if metric in ("d_eer", "auc", "average_precision"):
    return metric, ()
  raise ValueError(f"unknown metric {metric!r}; use d_eer, auc, average_precision, "
                   "bpcer@apcer=<t> or apcer@bpcer=<t>")


def paired_comparison(labels, scores_a, scores_b, metric: str = "d_eer",
                      n_resamples: int = 1000, n_permutations: int | None = None,
                      confidence: float = 0.95, seed: int = 0,
                      paired_seeds: bool = True) -> dict[str, Any]:
  """Is variant a better than b on the same images, beyond seed and sample noise?

  scores_a, scores_b: [n_seeds, n_images] (or [n_images]) on the same images.
  effect = mean over seeds of metric(a) - mean over seeds of metric(b) (for D-EER,
  negative means a errs less). Interval: paired bootstrap, images resampled by
  class with the SAME indices for a and b, and seeds resampled too; with
  paired_seeds seed i of a and of b are resampled together (use when they share
  an initialisation or data order), otherwise independently. p-value: two-sided
  paired permutation test, each (image, seed) pair of scores swapped between a
  and b with probability 1/2, p = (1 + #{|T*| >= |T|}) / (1 + n_permutations);
  exact under the null that a and b are exchangeable on each image (pairs taken
  by seed index). The two answer different questions: the bootstrap says how
  large the effect plausibly is, the permutation test guarantees the stated
  false-positive rate, which a bootstrap interval alone does not at small n.
  """
  labels = np.asarray(labels).astype(int).ravel()
  a = np.asarray(scores_a, np.float64)
  b = np.asarray(scores_b, np.float64)
  a, b = (a[None] if a.ndim == 1 else a), (b[None] if b.ndim == 1 else b)
  if a.ndim != 2 or a.shape != b.shape:
    raise ValueError(f"scores_a {a.shape} and scores_b {b.shape} must both be [n_seeds, n_images]")
  for s in range(a.shape[0]):
    metrics._check(labels, a[s])
    metrics._check(labels, b[s])
  metric, targets = _parse_metric(metric)
  _check_resampling(n_resamples, confidence)
  n_perm = int(n_resamples if n_permutations is None else n_permutations)
  if n_perm < 1:
    raise ValueError(f"n_permutations must be >= 1, got {n_perm}")
  n_seeds, n = a.shape
  ma = _batch_metric(a, labels, metric, targets)
  mb = _batch_metric(b, labels, metric, targets)
  effect = float(ma.mean() - mb.mean())
  rng_img, rng_seed, rng_perm = np.random.default_rng(seed).spawn(3)

  # Paired bootstrap: the same image resample for every seed and both variants.
  i0, i1 = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
  sets = []
  for x in (*a, *b):
    u, g = np.unique(x, return_inverse=True)
    sets.append((u, g[i0], g[i1]))
  chunk = max(1, _CHUNK_ELEMENTS // n)
  boot = []
  for s in range(0, int(n_resamples), chunk):
    c = min(chunk, int(n_resamples) - s)
    d0 = rng_img.integers(0, i0.size, (c, i0.size))
    d1 = rng_img.integers(0, i1.size, (c, i1.size))
    vals = np.empty((2 * n_seeds, c))
    for j, (u, g0, g1) in enumerate(sets):
      m = u.size
      off = (np.arange(c) * m)[:, None]
      w0 = np.bincount((g0[d0] + off).ravel(), minlength=c * m).reshape(c, m)
      w1 = np.bincount((g1[d1] + off).ravel(), minlength=c * m).reshape(c, m)
      vals[j] = _group_metrics(u, w0.astype(np.float64), w1.astype(np.float64),
                               targets, want=(metric,))[metric]
    off = (np.arange(c) * n_seeds)[:, None]
    pick_a = rng_seed.integers(0, n_seeds, (c, n_seeds))
    pick_b = pick_a if paired_seeds else rng_seed.integers(0, n_seeds, (c, n_seeds))
    ca = np.bincount((pick_a + off).ravel(), minlength=c * n_seeds).reshape(c, n_seeds)
    cb = np.bincount((pick_b + off).ravel(), minlength=c * n_seeds).reshape(c, n_seeds)
    boot.append(((ca * vals[:n_seeds].T).sum(1) - (cb * vals[n_seeds:].T).sum(1)) / n_seeds)
  boot = np.concatenate(boot)
  low, high = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])

  # Paired permutation test (the observed statistic through the same code path).
  chunk = max(1, _CHUNK_ELEMENTS // (2 * n_seeds * n))
  perm = []
  for s in range(0, n_perm, chunk):
    c = min(chunk, n_perm - s)
    swap = rng_perm.random((c, n_seeds, n)) < 0.5
    pa, pb = np.where(swap, b, a), np.where(swap, a, b)
    v = _batch_metric(np.concatenate([pa, pb]).reshape(2 * c * n_seeds, n), labels,
                      metric, targets).reshape(2, c, n_seeds)
    perm.append(v[0].mean(1) - v[1].mean(1))
  perm = np.concatenate(perm)
  extreme = np.abs(perm) >= abs(effect) - 1e-12 * max(1.0, abs(effect))
  p_value = (1 + int(np.count_nonzero(extreme))) / (1 + n_perm)
  return {"metric": metric, "effect": effect, "low": float(low), "high": float(high),
          "p_value": float(p_value), "mean_a": float(ma.mean()), "mean_b": float(mb.mean()),
          "n_seeds": n_seeds, "n_images": n, "n_resamples": int(n_resamples),
          "n_permutations": n_perm}


def mean_std_over_seeds(values) -> dict[str, Any]:
  """Mean and sample standard deviation (ddof=1; NaN for one seed, which has no
  spread) over seeds: values is a sequence of numbers, or of dicts of numbers
  (e.g. one `metrics.summary` per seed; keys present in all are reported)."""
  values = list(values)
  if not values:
    raise ValueError("need at least one seed")
  if isinstance(values[0], Mapping):
    keys = [k for k in values[0] if all(k in v for v in values)]
    return {k: mean_std_over_seeds([v[k] for v in values]) for k in keys}
  x = np.asarray(values, np.float64)
  if x.ndim != 1 or not np.all(np.isfinite(x)):
    raise ValueError("values must be finite numbers, one per seed")
  std = float(x.std(ddof=1)) if x.size > 1 else float("nan")
  return {"mean": float(x.mean()), "std": std, "n": int(x.size)}
