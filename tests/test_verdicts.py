"""cmfl_jax.verdicts: the conformal threshold's guarantee by simulation, the
unsure band, the stability check, named calibrations and `decide`."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from cmfl_jax import verdicts
from cmfl_jax.verdicts import calibration, conformal, selective, stability, store


# ----------------------------------------------------------------------------
# The guarantee, by simulation.

@pytest.mark.parametrize("alpha,n", [(0.05, 19), (0.05, 60), (0.1, 200), (0.01, 150)])
def test_marginal_false_alarm_rate_is_at_most_the_target(alpha, n):
  """Many random calibration sets and new images: the realised false-alarm
  rate is <= the target within binomial error, and not far below it (the
  threshold is not needlessly strict: >= alpha - 1/(n+1))."""
  rng = np.random.default_rng(n)
  trials, fresh = 4000, 50
  cal = rng.beta(5, 2, (trials, n))          # any continuous score distribution
  new = rng.beta(5, 2, (trials, fresh))
  k = conformal.order_statistic(n, alpha)
  t = np.sort(cal, axis=1)[:, k - 1:k]
  for row in cal[:3]:  # the function itself gives the same thresholds
    assert conformal.threshold(row, alpha)["threshold"] == np.sort(row)[k - 1]
  # Draws within a trial share the threshold: the trial means are independent.
  per_trial = (new < t).mean(axis=1)
  rate, sem = per_trial.mean(), per_trial.std(ddof=1) / math.sqrt(trials)
  assert rate <= alpha + 3 * sem, (rate, sem)
  assert rate >= alpha - 1 / (n + 1) - 3 * sem, (rate, sem)
  assert rate == pytest.approx(k / (n + 1), abs=4 * sem)  # exact without ties


def test_pac_threshold_holds_with_the_stated_confidence():
  """Uniform scores, so the threshold's own false-alarm rate is t itself:
  it exceeds alpha in at most delta of the calibration draws."""
  alpha, delta, n, trials = 0.05, 0.1, 200, 4000
  rng = np.random.default_rng(7)
  k = conformal.order_statistic(n, alpha, delta)
  assert 1 <= k < conformal.order_statistic(n, alpha)   # stricter than the marginal one
  t = np.sort(rng.random((trials, n)), axis=1)[:, k - 1]
  exceed = np.mean(t > alpha)
  assert exceed <= delta + 3 * math.sqrt(delta * (1 - delta) / trials), exceed
  assert exceed > delta / 4  # and it uses its budget: not a trivially strict threshold


@pytest.mark.parametrize("alpha,delta,need", [(0.05, None, 19), (0.1, None, 9), (0.01, None, 99),
                                              (0.05, 0.05, 59)])
def test_too_few_images_says_how_many_are_needed(alpha, delta, need):
  assert conformal.images_needed(alpha, delta) == need
  conformal.threshold(np.linspace(0, 1, need), alpha, delta)          # enough
  with pytest.raises(conformal.NotEnoughImages, match=f"at least {need} are needed"):
    conformal.threshold(np.linspace(0, 1, need - 1), alpha, delta)


def test_threshold_states_its_guarantee():
  out = conformal.threshold(np.arange(100) / 100, 0.05)
  assert out["k"] == 5 and out["threshold"] == 0.04 and out["kind"] == "marginal"
  assert out["bound"] == pytest.approx(5 / 101) and "5/101" in out["guarantee"]
  with pytest.raises(ValueError):
    conformal.threshold([0.1, float("nan")] * 20, 0.05)


# ----------------------------------------------------------------------------
# The unsure band.

def _dev(n=400, seed=0, overlap=1.0):
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 2).astype(np.int32)
  logits = np.where(labels == 1, 1.0, -1.0) + rng.normal(0, overlap, n)
  return labels, 1 / (1 + np.exp(-logits))


def test_band_meets_the_target_error_with_the_widest_coverage():
  labels, scores = _dev(n=200)
  t = 0.5
  plain = np.mean((scores >= t) != (labels == 1))
  band = selective.fit_band(labels, scores, t, 0.05)
  assert plain > 0.1  # without a band the error is well above the target
  s = selective.summary(labels, scores, band)
  assert band["lo"] <= t <= band["hi"]
  assert s["selective_error"] <= 0.05 and s["coverage"] == pytest.approx(band["dev_coverage"])
  assert 0.3 < s["coverage"] < 1.0
  # Widest: a brute force over every (lo, hi) pair of dev scores covers no more.
  cands = np.concatenate([[0.0, t, 1.01], scores])
  best = 0.0
  for lo in cands[cands <= t]:
    for hi in cands[cands >= t]:
      v = selective.verdicts(scores, {"lo": lo, "hi": hi})
      given = v >= 0
      if given.any() and np.mean(v[given] != labels[given]) <= 0.05:
        best = max(best, given.mean())
  assert s["coverage"] == pytest.approx(best, abs=1.5 / len(scores))
  # A looser target covers more; target 0 on separable data covers all.
  assert selective.fit_band(labels, scores, t, 0.12)["dev_coverage"] > band["dev_coverage"]
  sep = selective.fit_band([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.5, 0.0)
  assert sep["dev_coverage"] == 1.0 and sep["dev_error"] == 0.0


def test_band_with_tied_scores_reports_what_it_does():
  """Saturated float32 scores (exactly 0 or 1) and coarse scores tie: the
  band's edges cannot split a group of equal scores, so the coverage and
  error the fit reports are those of applying the band to the same dev
  scores, and the error meets the target."""
  for seed in range(60):
    rng = np.random.default_rng(seed)
    n = rng.integers(5, 40)
    labels = rng.integers(0, 2, n)
    scores = rng.choice([0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0], n)
    for target in (0.05, 0.2):
      band = selective.fit_band(labels, scores, 0.5, target)
      s = selective.summary(labels, scores, band)
      assert s["coverage"] == pytest.approx(band["dev_coverage"]), (seed, band, s)
      assert s["selective_error"] == pytest.approx(band["dev_error"]), (seed, band, s)
      assert s["selective_error"] <= target + 1e-9


def test_band_on_held_out_data_and_risk_coverage():
  labels, scores = _dev(seed=1)
  band = selective.fit_band(labels, scores, 0.5, 0.05)
  test_labels, test_scores = _dev(n=4000, seed=2)
  s = selective.summary(test_labels, test_scores, band)
  plain = np.mean((test_scores >= 0.5) != (test_labels == 1))
  # Fitted on 400 dev images, the band is optimistic on new data (an estimate,
  # not a guarantee) but still removes a good part of the errors.
  assert s["selective_error"] < 0.75 * plain and 0 < s["unsure_share"] < 0.6, (s, plain)
  curve = selective.risk_coverage(test_labels, test_scores, 0.5)
  assert curve["coverage"][-1] == 1.0
  assert curve["risk"][-1] == pytest.approx(np.mean((test_scores >= 0.5) != (test_labels == 1)))
  assert curve["risk"][10] < curve["risk"][-1]  # abstaining near the threshold helps


# ----------------------------------------------------------------------------
# Stability and decide.

def test_stability_flags_a_verdict_that_flips():
  assert stability.unstable(0.6, {"jpeg:95": 0.62, "resize:0.9": 0.55}, 0.5) is None
  reason = stability.unstable(0.52, {"jpeg:95": 0.47, "resize:0.9": 0.55}, 0.5)
  assert reason == "verdict changes after jpeg:95 (0.470)"
  with pytest.raises(ValueError):
    stability.check_conditions(["jpeg:101"])
  # The perturbations are the mild ones, applied for real.
  rng = np.random.default_rng(0)
  smooth = np.repeat(np.repeat(rng.integers(0, 255, (1, 8, 8, 3), np.uint8), 4, 1), 4, 2)
  for c in stability.CONDITIONS:
    out = stability.perturbed(smooth, c)
    diff = np.abs(out.astype(int) - smooth).mean()
    assert out.shape == smooth.shape and 0 < diff < 25, (c, diff)


def test_decide_orders_the_reasons():
  band = {"lo": 0.4, "hi": 0.7, "target_error": 0.05}
  assert verdicts.decide(0.8, 0.5, band) == ("real", "score 0.8000 >= 0.7000, the top of the "
                                                      "unsure band")
  assert verdicts.decide(0.3, 0.5, band) == ("synthetic", "score 0.3000 < 0.4000, the bottom "
                                                           "of the unsure band")
  v, why = verdicts.decide(0.55, 0.5, band)
  assert v == "unsure" and why.startswith("score in the unsure band [0.400, 0.700)")
  assert verdicts.decide(0.9, 0.5, band, unstable="verdict changes after x") == (
      "unsure", "verdict changes after x")
  assert verdicts.decide(0.9, 0.5, band, "flip", "face too small (12 px)") == (
      "unsure", "face too small (12 px)")
  assert verdicts.decide(0.45, 0.5) == ("synthetic", "score 0.4500 < threshold 0.5000")
  assert verdicts.decide(0.5, 0.5) == ("real", "score 0.5000 >= threshold 0.5000")


def test_store_refuses_to_overwrite_and_reads_plain_json(tmp_path):
  cal = {**conformal.threshold(np.linspace(0, 1, 40), 0.05), "band": None}
  where = store.save(str(tmp_path), "phone", cal)
  assert where == str(tmp_path / "calibrations" / "phone.json")
  assert verdicts.load_calibration(str(tmp_path), "phone")["threshold"] == cal["threshold"]
  with pytest.raises(store.CalibrationError, match="exists.*--overwrite"):
    store.save(str(tmp_path), "phone", {**cal, "threshold": 0.9})
  assert json.load(open(where))["threshold"] == cal["threshold"]  # untouched
  store.save(str(tmp_path), "phone", {**cal, "threshold": 0.9}, overwrite=True)
  assert store.load(str(tmp_path), "phone")["threshold"] == 0.9
  with pytest.raises(store.CalibrationError, match="available: phone"):
    store.load(str(tmp_path), "camera")
  with pytest.raises(store.CalibrationError, match="bad calibration name"):
    store.path(str(tmp_path), "../x")
  (tmp_path / "calibrations" / "bad.json").write_text("{not json")
  with pytest.raises(store.CalibrationError, match="not valid JSON"):
    store.load(str(tmp_path), "bad")


# ----------------------------------------------------------------------------
# End to end: the embedded benchmark's held-out camera (real2).

@pytest.fixture(scope="module")
def camera_run(reference_run, tmp_path_factory):
  """The session's smoke model and 48 bona fide images of the embedded
  benchmark's held-out camera (`real2_eval` of a 32x32 benchmark: the
  sampler's images, without preparing the whole TFDS dataset) as PNG files."""
  from PIL import Image

  from cmfl_jax.data.synthetic import sampler
  root = tmp_path_factory.mktemp("real2")
  paths = []
  for i, image in enumerate(sampler.sample("real2", "eval", 48, 32)):
    paths.append(str(root / f"{i:03d}.png"))
    Image.fromarray(image).save(paths[-1])
  return reference_run[0], paths


def test_calibrating_on_the_held_out_camera_keeps_its_false_alarms_within_the_guarantee(
    camera_run, tmp_path):
  """Calibrate (the command) on half of the held-out camera's images; on the
  other half the share called synthetic stays within the guarantee (binomial
  error), and over many random halves of its scores it is <= the target."""
  import os
  import subprocess
  import sys

  from cmfl_jax.scoring import decisions
  from helpers import ROOT, main_env
  workdir, paths = camera_run
  calib, rest = paths[::2], paths[1::2]
  alpha = 0.1
  env = main_env(os.environ["JAX_COMPILATION_CACHE_DIR"])
  proc = subprocess.run([sys.executable, "-m", "cmfl_jax.calibrate", f"--workdir={workdir}",
                         f"--real={os.path.dirname(calib[0])}", "--name=cam", "--false_alarm=0.01"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: 48 bona fide images cannot guarantee a false-alarm rate of 0.01: at least 99 "
      "are needed")
  proc = subprocess.run([sys.executable, "-m", "cmfl_jax.calibrate", f"--workdir={workdir}",
                         *[f"--real={p}" for p in calib], "--name=cam", f"--false_alarm={alpha}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "the 2-th smallest of 24 bona fide scores" in proc.stdout
  assert "price on dev: detects " in proc.stdout
  stored = json.load(open(os.path.join(workdir, "calibrations", "cam.json")))
  assert stored["k"] == 2 and stored["n"] == 24 and stored["bound"] == pytest.approx(2 / 25)
  assert 0.0 <= stored["dev"]["detection"] <= 1.0 and stored["band"]["lo"] <= stored["threshold"]
  with pytest.raises(store.CalibrationError, match="exists.*--overwrite"):  # before scoring
    calibration.check_before_scoring(workdir, "cam", len(calib), alpha, None, overwrite=False)

  predictions = decisions.predict(workdir, paths, calibration="cam", stability=("jpeg:95",))
  rows = {r["path"]: r for r in predictions.rows}
  assert predictions.threshold == stored["threshold"] and predictions.calibration == "cam"
  # The stored threshold is the k-th smallest score of the calibration images
  # as predict scores them (calibrate scored what predict scores).
  calib_scores = np.sort([rows[p]["score"] for p in calib])
  assert stored["threshold"] == pytest.approx(calib_scores[stored["k"] - 1], abs=1e-6)
  # False alarms are scores below the threshold (the guarantee is about the
  # threshold, before any band or stability check): on the held-out half, a
  # count that a binomial at the bound would give with probability >= 0.001.
  from scipy import stats as scipy_stats
  bound = stored["bound"]
  alarms = int(sum(rows[p]["score"] < stored["threshold"] for p in rest))
  assert scipy_stats.binom.sf(alarms - 1, len(rest), bound) >= 1e-3, (alarms, len(rest), bound)
  # Every verdict is the calibration's: unsure only for an unstable score or
  # one in its band, else the side of the band's edges.
  band = stored["band"]
  for r in rows.values():
    unstable = r["reason"].startswith("verdict changes after")
    in_band = band["lo"] <= r["score"] < band["hi"]
    want = ("unsure" if unstable or in_band else
            "real" if r["score"] >= max(band["hi"], stored["threshold"]) else "synthetic")
    assert r["verdict"] == want and r["reason"], r  # every one says why
    assert bool(re.match(r"score [\d.]+ (>=|<) ", r["reason"])) == (want != "unsure"), r
  assert {r["verdict"] for r in rows.values()} - {"unsure"}  # not all unsure


def test_eval_report_gives_the_unsure_share_and_risk_coverage(reference_run):
  """The band fitted on the dev split travels with the checkpoint; the
  evaluation gives per split the share unsure, the error on the images that
  got a verdict (recomputed here from the score file) and the curve."""
  import glob
  import os

  from cmfl_jax.evaluation import score_files
  from cmfl_jax.training import checkpointing
  workdir, _ = reference_run
  kind, step = checkpointing.select_step(workdir, "best")
  meta = checkpointing.read_meta(checkpointing.make_managers(workdir)[kind], step)
  band = meta["unsure_band"]
  assert band["lo"] <= meta["dev_threshold"] <= band["hi"] and band["target_error"] == 0.05
  assert band["dev_error"] <= 0.05
  (out,) = glob.glob(os.path.join(workdir, "eval", f"best_{step}"))
  results = json.load(open(os.path.join(out, "metrics.json")))
  # The split the last evaluation of the shared run scored (another test
  # re-evaluates it on "dev").
  (split,) = results["splits"]
  entry = results["splits"][split]["verdicts"]
  labels, scores, _ = score_files.read_scores(os.path.join(out, f"{split}_scores.csv"))
  want = selective.summary(labels, scores, band)
  for key in ("unsure_share", "selective_error", "false_alarm", "missed_attack"):
    assert entry[key] == pytest.approx(want[key], abs=1e-9), key
  curve = entry["risk_coverage"]
  assert curve["coverage"][-1] == 1.0
  assert curve["risk"][-1] == pytest.approx(np.mean((scores >= meta["dev_threshold"]) != labels))
  report = open(os.path.join(out, "report.md")).read()
  assert "## Verdicts: real, synthetic, unsure" in report and "risk_coverage.png" in report
  assert os.path.getsize(os.path.join(out, "risk_coverage.png")) > 1000


def test_predict_align_marks_faces_too_small_and_tight_crops(reference_run, tmp_path):
  """predict --align: a face that would be enlarged more than max_upscale to
  the model's input is scored but `unsure: face too small`; a tight face
  crop is handled (framing "tight")."""
  pytest.importorskip("mtcnn")
  skdata = pytest.importorskip("skimage.data")
  from PIL import Image

  from cmfl_jax.data import aligned_crops as align_files
  from cmfl_jax.scoring import decisions
  astronaut = skdata.astronaut()
  small = np.full((320, 320, 3), 120, np.uint8)
  small[100:228, 150:278] = np.asarray(Image.fromarray(astronaut).resize(
      (128, 128), Image.Resampling.BICUBIC))
  Image.fromarray(small).save(tmp_path / "small.png")
  tight = np.asarray(Image.fromarray(astronaut[60:250, 150:340]).resize((128, 128)))
  Image.fromarray(tight).save(tmp_path / "tight.png")
  # The smoke model's input is 32 px: the small face (44 px crop) is 0.7x, the
  # tight one 0.25x; with max_upscale 0.5 the first has too few pixels.
  options = align_files.AlignOptions(max_upscale=0.5)
  rows = {r["path"].rsplit("/", 1)[-1]: r for r in decisions.predict(
      reference_run[0], [str(tmp_path / "small.png"), str(tmp_path / "tight.png")],
      align=options).rows}
  assert rows["small.png"]["verdict"] == "unsure"
  assert rows["small.png"]["reason"].startswith("face too small (26 px")
  assert 0 <= rows["small.png"]["score"] <= 1
  assert rows["tight.png"]["framing"] == "tight" and "score" in rows["tight.png"]
  assert not rows["tight.png"]["reason"].startswith("face too small")


def test_one_rule_picks_the_threshold_for_predict_and_the_service():
  band = {"lo": 0.4, "hi": 0.6}
  meta = {"dev_threshold": 0.3, "unsure_band": band}
  named = {"threshold": 0.8, "band": None}
  assert verdicts.rule(meta, named, "strict") == (0.8, None, "calibration:strict")
  assert verdicts.rule(meta) == (0.3, band, "dev_eer")
  assert verdicts.rule({}) == (None, None, "default_0.5")
  carried = {**meta, "chosen_calibration": {"name": "lax", "threshold": 0.7}}
  assert verdicts.rule(carried) == (0.7, None, "calibration:lax")  # an export's own
  assert verdicts.rule(carried, named, "strict")[0] == 0.8  # a named one wins
