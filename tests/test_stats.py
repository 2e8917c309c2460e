"""Bootstrap, calibration, operating points and significance tests, checked against
`cmfl_jax.evaluation.metrics` on explicit data, known distributions and simulation."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from scipy.stats import norm

from cmfl_jax.evaluation import metrics, stats


def _tied_data(rng, n):
  labels = rng.integers(0, 2, n)
  labels[:2] = (0, 1)
  scores = np.round(rng.normal(labels * rng.uniform(-0.5, 2.0), 1.0), int(rng.integers(0, 2)))
  return labels, scores


def test_unit_weights_equal_metrics_summary_with_ties():
  rng = np.random.default_rng(0)
  for _ in range(30):
    labels, scores = _tied_data(rng, int(rng.integers(2, 80)))
    dev = float(rng.choice(scores))
    ref = metrics.summary(labels, scores, dev)
    boot = stats.bootstrap_summary(labels, scores, {"0.5": 0.5, "dev": dev}, n_resamples=5)
    weighted = stats.weighted_summary(labels, scores, np.ones(labels.size),
                                      {"0.5": 0.5, "dev": dev})
    assert set(boot) == set(ref) - {"dev_threshold"}
    for key in boot:
      assert boot[key]["value"] == pytest.approx(ref[key], abs=1e-9), key
      assert weighted[key][0] == pytest.approx(ref[key], abs=1e-9), key


def test_integer_weights_equal_metrics_on_repeated_data():
  # Zero weights leave scores out (as a resample does), which must not change anything.
  rng = np.random.default_rng(1)
  for _ in range(20):
    labels, scores = _tied_data(rng, int(rng.integers(4, 40)))
    w = rng.integers(0, 3, (8, labels.size))
    w[:, 0] += w[:, labels == 0].sum(1) == 0
    w[:, 1] += w[:, labels == 1].sum(1) == 0
    got = stats.weighted_summary(labels, scores, w, {"0.5": 0.5, "dev": 0.3})
    for i in range(w.shape[0]):
      idx = np.repeat(np.arange(labels.size), w[i])
      ref = metrics.summary(labels[idx], scores[idx], 0.3)
      for key, value in ref.items():
        if key != "dev_threshold":
          assert got[key][i] == pytest.approx(value, abs=1e-9), (key, w[i])


def test_intervals_cover_the_true_auc_and_eer():
  # Attacks N(0, 1), bona fide N(d, 1): AUC = Phi(d / sqrt 2), D-EER = Phi(-d / 2).
  # Sizes: at n = 200 per class the percentile intervals are near nominal for both
  # (D-EER over-covers at n <= 100); 800 sets keep the Monte Carlo SD at ~0.8 points.
  n, d, sims = 200, 1.0, 800
  true_auc, true_eer = norm.cdf(d / np.sqrt(2)), norm.cdf(-d / 2)
  labels = np.repeat([0, 1], n)
  rng = np.random.default_rng(2024)
  hit_auc = hit_eer = 0
  for k in range(sims):
    scores = rng.normal(labels * d, 1.0)
    b = stats.bootstrap_summary(labels, scores, {}, n_resamples=300, seed=k, keys=("auc", "d_eer"))
    hit_auc += b["auc"]["low"] <= true_auc <= b["auc"]["high"]
    hit_eer += b["d_eer"]["low"] <= true_eer <= b["d_eer"]["high"]
  assert 0.93 <= hit_auc / sims <= 0.97
  assert 0.93 <= hit_eer / sims <= 0.97


def test_bootstrap_is_deterministic_and_chunk_independent(monkeypatch):
  labels, scores = _tied_data(np.random.default_rng(3), 300)
  first = stats.bootstrap_summary(labels, scores, n_resamples=64, seed=7)
  assert stats.bootstrap_summary(labels, scores, n_resamples=64, seed=7) == first
  assert stats.bootstrap_summary(labels, scores, n_resamples=64, seed=8) != first
  monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 1000)  # many small chunks
  assert stats.bootstrap_summary(labels, scores, n_resamples=64, seed=7) == first
  assert all(first[k]["low"] <= first[k]["high"] for k in first)


def test_format_interval():
  assert stats.format_interval(0.1234, 0.1, 0.15) == "12.34 [10.00, 15.00]"
  assert stats.format_interval(0.9, 0.85, 0.95, percent=False) == "0.900 [0.850, 0.950]"


def test_calibration_lowers_ece_and_keeps_auc():
  rng = np.random.default_rng(4)

  def split(n):
    z = rng.normal(0.0, 1.5, n)  # true log-odds of bona fide
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return labels, 5.0 * z + 2.0  # overconfident and shifted head

  dev_y, dev_logit = split(4000)
  test_y, test_logit = split(4000)
  params = stats.fit_platt(dev_y, dev_logit)
  assert params == json.loads(json.dumps(params)) and params["method"] == "platt"
  # The true map back is sigmoid((logit - 2) / 5).
  assert params["a"] == pytest.approx(0.2, abs=0.03)
  assert params["b"] == pytest.approx(-0.4, abs=0.1)
  raw = 1 / (1 + np.exp(-test_logit))
  calibrated = stats.apply_calibration(params, test_logit)
  ece_raw = stats.expected_calibration_error(test_y, raw)
  ece_cal = stats.expected_calibration_error(test_y, calibrated)
  assert ece_raw > 0.1 and ece_cal < 0.03
  assert metrics.roc_auc(test_y, calibrated) == metrics.roc_auc(test_y, test_logit)


def test_platt_on_separable_data_stays_finite():
  labels = np.repeat([0, 1], 50)
  logits = np.r_[np.linspace(-6, -1, 50), np.linspace(1, 6, 50)]
  params = stats.fit_platt(labels, logits)
  p = stats.apply_calibration(params, logits)
  assert np.isfinite(params["a"]) and 0 < params["a"] < 1e3
  assert 0 < p.min() and p.max() < 1
  assert metrics.roc_auc(labels, p) == 1.0


def test_ece_and_reliability_by_hand():
  # n_bins=10: the 0.15s fall in bin 1 (mean 0.15, freq 1/2), 0.92 and 0.98 in bin 9
  # (mean 0.95, freq 1); p = 1 belongs to the last bin.
  labels = [0, 1, 1, 1]
  probs = [0.15, 0.15, 0.92, 0.98]
  curve = stats.reliability_curve(labels, probs, n_bins=10)
  assert curve["count"].tolist() == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]
  assert curve["mean_predicted"][9] == pytest.approx(0.95)
  assert curve["mean_predicted"][1] == pytest.approx(0.15)
  assert curve["observed_frequency"][1] == pytest.approx(0.5)
  assert np.isnan(curve["mean_predicted"][0])
  assert stats.reliability_curve([1], [1.0], n_bins=10)["count"][9] == 1
  ece = stats.expected_calibration_error(labels, probs, 10)
  assert ece == pytest.approx(0.5 * 0.35 + 0.5 * 0.05)


def test_dev_operating_points_are_the_documented_thresholds():
  rng = np.random.default_rng(5)
  labels, scores = _tied_data(rng, 600)
  points = stats.dev_operating_points(labels, scores)
  assert set(points) == {"eer", "apcer_1", "apcer_5", "bpcer_1", "bpcer_5"}
  assert points["eer"] == metrics.eer(labels, scores)[1]
  candidates = np.append(np.unique(scores), np.nextafter(scores.max(), np.inf))
  rates = [metrics.rates_at_threshold(labels, scores, t) for t in candidates]
  for t in (0.01, 0.05):
    smallest = min(c for c, (ap, _) in zip(candidates, rates) if ap <= t)
    largest = max(c for c, (_, bp) in zip(candidates, rates) if bp <= t)
    assert points[f"apcer_{100 * t:g}"] == smallest
    assert points[f"bpcer_{100 * t:g}"] == largest
    bpcer_there = metrics.rates_at_threshold(labels, scores, smallest)[1]
    apcer_there = metrics.rates_at_threshold(labels, scores, largest)[0]
    assert bpcer_there == metrics.bpcer_at_apcer(labels, scores, t)
    assert apcer_there == metrics.apcer_at_bpcer(labels, scores, t)


def test_transfer_flags_a_shifted_split():
  rng = np.random.default_rng(6)
  labels = np.repeat([0, 1], 500)
  dev = rng.normal(labels * 2.0, 1.0)
  points = stats.dev_operating_points(labels, dev)
  same_scores = rng.normal(labels * 2.0, 1.0)
  same = stats.evaluate_operating_points(labels, same_scores, points, n_resamples=100)
  shifted_scores = rng.normal(labels * 2.0, 1.0) + 2.0  # ranks as well, threshold now wrong
  shifted = stats.evaluate_operating_points(labels, shifted_scores, points, n_resamples=100)
  assert not same["eer_transfer"]["miscalibrated"]
  assert shifted["eer_transfer"]["miscalibrated"]
  assert "miscalibrated" in shifted["eer_transfer"]["message"]
  ap, bp = metrics.rates_at_threshold(labels, shifted_scores, points["apcer_5"])
  assert shifted["points"]["apcer_5"]["apcer"]["value"] == ap
  assert shifted["points"]["apcer_5"]["bpcer"]["value"] == bp
  assert shifted["d_eer"]["value"] == metrics.eer(labels, shifted_scores)[0]


def _seed_scores(rng, labels, separation, n_seeds, latent):
  return latent + labels * separation + rng.normal(0.0, 0.7, (n_seeds, labels.size))


def test_paired_comparison_finds_a_planted_difference():
  rng = np.random.default_rng(7)
  labels = np.repeat([0, 1], 150)
  latent = rng.normal(labels * 0.8, 1.0)
  a = _seed_scores(rng, labels, 1.0, 3, latent)   # clearly better variant
  b = _seed_scores(rng, labels, 0.0, 3, latent)
  out = stats.paired_comparison(labels, a, b, "d_eer", n_resamples=200, seed=0)
  assert out["mean_a"] == pytest.approx(np.mean([metrics.eer(labels, s)[0] for s in a]), abs=1e-12)
  assert out["mean_b"] == pytest.approx(np.mean([metrics.eer(labels, s)[0] for s in b]), abs=1e-12)
  assert out["effect"] == pytest.approx(out["mean_a"] - out["mean_b"], abs=1e-12)
  assert out["effect"] < 0 and out["high"] < 0 and out["p_value"] < 0.05
  auc = stats.paired_comparison(labels, a, b, "auc", n_resamples=200, seed=0, paired_seeds=False)
  assert auc["effect"] > 0 and auc["low"] > 0 and auc["p_value"] < 0.05
  assert stats.paired_comparison(labels, a, b, "d_eer", n_resamples=200, seed=0) == out


def test_paired_comparison_is_quiet_under_the_null():
  rng = np.random.default_rng(8)
  labels = np.repeat([0, 1], 40)
  quiet = 0
  cases = 100
  for k in range(cases):
    latent = rng.normal(labels * 1.0, 1.0)
    a = _seed_scores(rng, labels, 0.0, 2, latent)  # same distribution per image
    b = _seed_scores(rng, labels, 0.0, 2, latent)
    out = stats.paired_comparison(labels, a, b, "auc", n_resamples=20, n_permutations=200, seed=k)
    quiet += out["p_value"] > 0.05
  assert quiet >= 0.9 * cases


def test_mean_std_over_seeds():
  x = [0.1, 0.15, 0.3]
  out = stats.mean_std_over_seeds(x)
  assert out["mean"] == pytest.approx(statistics.mean(x))
  assert out["std"] == pytest.approx(statistics.stdev(x))
  per_key = stats.mean_std_over_seeds([{"d_eer": v, "auc": 1 - v} for v in x])
  assert per_key["auc"]["mean"] == pytest.approx(1 - statistics.mean(x))
  assert np.isnan(stats.mean_std_over_seeds([0.2])["std"])


def test_bad_input_is_a_clear_error():
  with pytest.raises(ValueError, match="no attack"):
    stats.bootstrap_summary([1, 1, 1], [0.2, 0.3, 0.4])
  with pytest.raises(ValueError, match="no bona fide"):
    stats.dev_operating_points([0, 0], [0.2, 0.3])
  with pytest.raises(ValueError, match="NaN"):
    stats.bootstrap_summary([0, 1, 1], [0.2, np.nan, 0.4])
  with pytest.raises(ValueError, match="NaN"):
    stats.fit_platt([0, 1], [0.2, np.nan])
  with pytest.raises(ValueError, match="NaN"):
    stats.paired_comparison([0, 1], [[0.1, 0.9]], [[0.2, np.nan]])
  with pytest.raises(ValueError, match="no attack"):
    stats.paired_comparison([1, 1], [[0.1, 0.9]], [[0.2, 0.3]])
  with pytest.raises(ValueError, match="NaN"):
    stats.expected_calibration_error([0, 1], [0.2, np.nan])
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    stats.expected_calibration_error([0, 1], [0.2, 1.5])
  with pytest.raises(ValueError, match="unknown metric"):
    stats.paired_comparison([0, 1], [[0.1, 0.9]], [[0.2, 0.3]], metric="accuracy")
