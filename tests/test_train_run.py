"""Training engine end to end, in subprocesses as a user runs it: the outputs
of a train + eval run, evaluation in a new process, interrupted and resumed
runs, several devices, the non-finite guard, every real-data source and the
validation subset.

Each run uses configs/smoke.py (tiny DenseNet, toy data, 32x32) and a shared
persistent XLA compilation cache so repeated runs skip most compile time.
"""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from helpers import SMOKE, restore_latest, run_main, train_log


def test_train_and_eval_outputs(reference_run):
  workdir, proc = reference_run
  log = train_log(workdir)
  assert [l["step"] for l in log] == list(range(1, 13))
  assert all(np.isfinite(l["train/loss"]) for l in log)
  vals = [json.loads(l) for l in open(os.path.join(workdir, "train_log.jsonl"))
          if "val_loss" in json.loads(l)]
  assert [v["step"] for v in vals] == [4, 8, 12]
  best = min(vals, key=lambda v: v["val_loss"])
  best_dirs = os.listdir(os.path.join(workdir, "checkpoints", "best"))
  assert str(best["step"]) in best_dirs
  assert "12" in os.listdir(os.path.join(workdir, "checkpoints", "latest"))
  for kind in ("best", "latest"):  # every committed step is sealed with its file list
    for step_dir in Path(workdir, "checkpoints", kind).iterdir():
      if step_dir.name.isdigit():
        files = json.loads((step_dir / "files.json").read_text())
        assert any(rel.startswith("state/") for rel in files) and "_CHECKPOINT_METADATA" in files
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  metrics = json.load(open(os.path.join(workdir, "eval", f"best_{best['step']}", "metrics.json")))
  assert metrics["step"] == best["step"]
  assert metrics["splits"]["eval"]["count"] == 16
  assert "eval" in proc.stdout and "best_" in proc.stdout
  # Report, plots, robustness rows and TensorBoard scalars of the evaluation.
  out_dir = os.path.join(workdir, "eval", f"best_{best['step']}")
  report_md = open(os.path.join(out_dir, "report.md")).read()
  d_eer = metrics["splits"]["eval"]["metrics_joint"]["d_eer"]
  ci = metrics["splits"]["eval"]["intervals_joint"]["d_eer"]
  assert f"| eval | 16 | {100 * d_eer:.1f} [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}] |" \
      in report_md
  assert ci["value"] == pytest.approx(d_eer) and ci["low"] <= d_eer <= ci["high"]
  # Fixed on the dev set at training time, stored with the checkpoint, applied here.
  assert set(metrics["operating_points"]) == {"eer", "apcer_1", "apcer_5", "bpcer_1", "bpcer_5"}
  assert metrics["calibration"]["method"] == "platt" and metrics["calibration"]["a"] > 0
  entry = metrics["splits"]["eval"]
  assert "eer_transfer" in entry["operating_points"]
  assert entry["calibration"]["auc_calibrated"] == entry["metrics_joint"]["auc"]
  assert "## Operating points fixed on the dev set" in report_md and "## Calibration" in report_md
  for condition in ("jpeg:50", "noise:5"):
    m = metrics["robustness"]["eval"][condition]["metrics_joint"]
    assert f"| {condition} | {100 * m['d_eer']:.1f} |" in report_md
    tag = condition.replace(":", "")
    assert os.path.exists(os.path.join(out_dir, f"eval@{tag}_scores.csv"))
  for png in ("det.png", "hist.png", "reliability.png"):
    assert open(os.path.join(out_dir, png), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  from tensorboard.backend.event_processing import event_accumulator
  import tensorflow as tf
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"),
                                           size_guidance={"tensors": 0})
  acc.Reload()
  logged = acc.Tensors("eval/eval/joint/d_eer")[-1]
  assert logged.step == best["step"]
  assert float(tf.make_ndarray(logged.tensor_proto)) == pytest.approx(d_eer, abs=1e-6)
  assert "robustness/eval/jpeg:50/d_eer" in acc.Tags()["tensors"]


def test_eval_in_new_process_reproduces_training_scores(reference_run, cache_dir):
  workdir, _ = reference_run
  from cmfl_jax.evaluation import score_files
  labels_t, scores_t, _ = score_files.read_scores(os.path.join(workdir, "best_val_scores.csv"))
  run_main(workdir, "--mode=eval", "--config.data.eval_splits=('dev',)", cache_dir=cache_dir)
  step = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints", "best")))
  labels_e, scores_e, _ = score_files.read_scores(
      os.path.join(workdir, "eval", f"best_{step}", "dev_scores.csv"))
  np.testing.assert_array_equal(labels_t, labels_e)
  np.testing.assert_allclose(scores_e, scores_t, atol=1e-7)
  assert np.std(scores_t) > 0


def test_sigterm_then_kill_then_resume_equals_uninterrupted(reference_run, tmp_path, cache_dir):
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "interrupted")
  # Graceful stop at step 5 (mid-epoch 2): checkpoint at 5, exit 143.
  p = run_main(workdir, "--config.train.debug_signal_at_step=5", cache_dir=cache_dir, check=False)
  assert p.returncode == 143, p.stderr[-3000:]
  assert "5" in os.listdir(os.path.join(workdir, "checkpoints", "latest"))
  # Hard kill at step 11: the last periodic checkpoint is step 9 (or 8, epoch end).
  p = run_main(workdir, "--config.train.debug_signal_at_step=11",
               f"--config.train.debug_signal={int(signal.SIGKILL)}", cache_dir=cache_dir,
               check=False)
  assert p.returncode == -signal.SIGKILL
  # The same command again finishes the run.
  run_main(workdir, cache_dir=cache_dir)
  step_r, ref, meta_r = restore_latest(ref_dir)
  step_i, got, meta_i = restore_latest(workdir)
  assert step_r == step_i == 12
  assert ref.keys() == got.keys()
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)  # bitwise
  assert meta_i["best_val_loss"] == meta_r["best_val_loss"]


def test_four_devices_match_one_device(reference_run, tmp_path, cache_dir):
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "four")
  proc = run_main(workdir, "--mode=train", cache_dir=cache_dir, devices=4)
  assert "4 local / 4 global devices" in proc.stderr
  a = [l["train/loss"] for l in train_log(ref_dir)]
  b = [l["train/loss"] for l in train_log(workdir)]
  # Same global batch, BN statistics over the global batch; only float
  # summation order differs across the 4-way split.
  np.testing.assert_allclose(b, a, rtol=1e-4)


def test_non_finite_loss_stops_with_step_and_keeps_last_good(tmp_path, cache_dir):
  workdir = str(tmp_path / "nan")
  p = run_main(workdir, "--mode=train", "--config.optim.learning_rate=1e30",
               "--config.train.checkpoint_every_steps=1", cache_dir=cache_dir, check=False)
  assert p.returncode == 1
  assert "non-finite loss or gradient at step" in p.stderr
  step, state, _ = restore_latest(workdir)
  assert all(np.all(np.isfinite(v)) for v in state.values() if v.dtype.kind == "f")


@pytest.mark.parametrize("source", ["csv", "folder", "tfds"])
def test_train_and_evaluate_from_each_source(tmp_path, source):
  """In-process: a few steps and a checkpoint evaluation from each real-data source."""
  import runpy
  import tensorflow_datasets as tfds
  from cmfl_jax.evaluation import evaluate
  from cmfl_jax.training import loop as train
  from test_input_pipeline import write_dataset, write_folders
  config = runpy.run_path(SMOKE)["get_config"]()
  config.train.num_epochs = 1
  config.data.source = source
  if source == "csv":
    config.data.data_root, config.data.protocol_dir = write_dataset(str(tmp_path / "d"), size=32)
  elif source == "folder":
    config.data.data_root = write_folders(str(tmp_path / "d"))
  else:
    from cmfl_jax.data import tfds_faces  # noqa: F401 - registers the builder
    manual = write_folders(str(tmp_path / "manual"))
    config.data.tfds_data_dir = str(tmp_path / "tfds")
    tfds.builder("cmfl_faces", data_dir=config.data.tfds_data_dir).download_and_prepare(
        file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=manual))
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(config, workdir)
  assert summary["steps"] >= 1 and np.isfinite(summary["best_val_loss"])
  results = evaluate.evaluate_checkpoint(config, workdir)
  n_eval = 8
  assert results["splits"]["eval"]["count"] == n_eval
  rows = open(os.path.join(results["out_dir"], "eval_scores.csv")).read().splitlines()
  assert rows[0] == "id,label,path,score" and len(rows) == n_eval + 1


def test_validation_subset_during_training_full_dev_split_for_the_stored_threshold(tmp_path):
  """train.val_examples: each epoch validates on the same seeded, stratified
  subset; at the end best and latest carry statistics of the whole dev split."""
  import runpy

  from cmfl_jax.data import sources
  from cmfl_jax.evaluation import evaluate, metrics
  from cmfl_jax.training import loop as train
  config = runpy.run_path(SMOKE)["get_config"]()
  config.data.toy_sizes = {"train": 32, "dev": 24, "eval": 16, "default": 16}
  config.train.val_examples = 9
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  vals = [json.loads(l) for l in open(os.path.join(workdir, "train_log.jsonl"))
          if "val_loss" in json.loads(l)]
  assert len(vals) == 2 and all(v["val_examples"] == 9 for v in vals)
  dev = sources.load_splits(config.data, ["dev"])[0]["dev"]
  subset = train.validation_subset(dev, 9, config.seed)
  assert len(subset) == 9 and set(subset.labels) == {0, 1}
  np.testing.assert_array_equal(subset.labels, train.validation_subset(dev, 9, config.seed).labels)
  for kind in ("best", "latest"):
    state, eval_fn, mesh, meta, _ = evaluate.restore_for_eval(config, workdir, kind)
    assert meta["dev_examples"] == 24
    joint = evaluate.evaluate_split(eval_fn, state, dev, mesh, data=config.data,
                                    batch_size=config.train.eval_batch_size)["scores"]["joint"]
    assert meta["dev_threshold"] == pytest.approx(metrics.eer(dev.labels, joint)[1], abs=1e-6)


def test_dev_config_is_typed_once_from_the_config():
  """What validation reads of the config, made once: the eval batch size, no
  classes without the attribution head, its classes and targets with it."""
  import runpy
  from cmfl_jax.data import pipeline
  from cmfl_jax.training import loop
  config = runpy.run_path(SMOKE)["get_config"]()
  config.train.eval_batch_size = 12
  config.eval.unsure_error = 0.1
  dev = loop.DevConfig.from_config(config)
  assert (dev.batch_size, dev.classes, dev.unsure_error) == (12, (), 0.1)
  assert dev.data == pipeline.InputConfig.from_config(config.data)  # typed, not the ConfigDict
  config.attribution.enabled = True
  config.attribution.classes = ("bona_fide", "stylegan2")
  config.attribution.known_acceptance = 0.9
  dev = loop.DevConfig.from_config(config)
  assert (dev.classes, dev.known_acceptance) == (("bona_fide", "stylegan2"), 0.9)
