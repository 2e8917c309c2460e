"""Metrics against hand-computed cases and scikit-learn."""

import numpy as np
import pytest

from cmfl_jax.evaluation import metrics


def test_hand_computed_eer_and_auc():
  # Attacks 0.1 0.4 0.6; bona fide 0.3 0.7 0.9. Threshold in (0.4, 0.6]: APCER 1/3,
  # BPCER 1/3 -> D-EER 1/3. AUC: pairs (bona > attack) = 1+3+3 of 9 -> 7/9.
  labels = [0, 0, 0, 1, 1, 1]
  scores = [0.1, 0.4, 0.6, 0.3, 0.7, 0.9]
  rate, thr = metrics.eer(labels, scores)
  assert rate == pytest.approx(1 / 3)
  assert 0.4 <= thr <= 0.6
  assert metrics.roc_auc(labels, scores) == pytest.approx(7 / 9)


def test_perfect_and_inverted():
  assert metrics.eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])[0] == 0.0
  assert metrics.roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
  assert metrics.eer([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])[0] == 1.0


def test_all_equal_scores_are_defined():
  rate, thr = metrics.eer([0, 1, 0, 1], [0.5] * 4)
  assert rate == 0.5 and thr == 0.5
  assert metrics.roc_auc([0, 1, 0, 1], [0.5] * 4) == 0.5


def test_one_class_missing_is_a_clear_error():
  with pytest.raises(ValueError, match="no attack"):
    metrics.eer([1, 1], [0.2, 0.3])
  with pytest.raises(ValueError, match="no bona fide"):
    metrics.roc_auc([0, 0], [0.2, 0.3])
  with pytest.raises(ValueError, match="NaN"):
    metrics.eer([0, 1], [0.2, np.nan])


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn(seed):
  sk = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 300)
  scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # many ties
  assert metrics.roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores))
  fpr, tpr, thr = sk.roc_curve(labels, scores)  # positive = bona fide
  t, apcer, bpcer = metrics.error_rates(labels, scores)
  # sklearn's points (APCER = fpr, BPCER = 1 - tpr) are a subset of ours.
  ours = set(zip(np.round(apcer, 12), np.round(bpcer, 12)))
  assert set(zip(np.round(fpr, 12), np.round(1 - tpr, 12))) <= ours
  rate, _ = metrics.eer(labels, scores)
  # D-EER lies between the ROC's APCER and BPCER where they cross.
  cross = np.argmin(np.abs(fpr - (1 - tpr)))
  assert min(fpr[cross], 1 - tpr[cross]) - 0.02 <= rate <= max(fpr[cross], 1 - tpr[cross]) + 0.02


def test_operating_points_hand_computed():
  # 10 attacks at 0.0..0.9, 10 bona fide at 0.5..1.4.
  labels = np.r_[np.zeros(10), np.ones(10)]
  scores = np.r_[np.arange(10) / 10, 0.5 + np.arange(10) / 10]
  # APCER <= 10% needs threshold > 0.8 (only 0.9 accepted): t = 0.9 -> bona
  # fide below 0.9 are 0.5..0.8 -> BPCER 40%.
  assert metrics.bpcer_at_apcer(labels, scores, 0.10) == pytest.approx(0.4)
  # APCER <= 1% needs t > 0.9 -> t = 1.0 -> BPCER 50%.
  assert metrics.bpcer_at_apcer(labels, scores, 0.01) == pytest.approx(0.5)
  # BPCER <= 10% needs t <= 0.6 -> best t = 0.6 -> attacks >= 0.6: 4 -> 40%.
  assert metrics.apcer_at_bpcer(labels, scores, 0.10) == pytest.approx(0.4)
  assert metrics.rates_at_threshold(labels, scores, 0.75) == (pytest.approx(0.2), pytest.approx(0.3))
  s = metrics.summary(labels, scores, dev_threshold=0.75)
  assert s["apcer@dev"] == pytest.approx(0.2) and s["bpcer@dev"] == pytest.approx(0.3)
  assert s["d_eer"] == pytest.approx(metrics.eer(labels, scores)[0])


@pytest.mark.parametrize("seed", range(3))
def test_average_precision_against_sklearn(seed):
  sk = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 200)
  scores = np.round(rng.normal(labels, 1.0), 1)
  assert metrics.average_precision(labels, scores) == pytest.approx(
      sk.average_precision_score(labels, scores))
