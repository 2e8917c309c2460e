"""Training engine end to end, in subprocesses as a user runs it.

Each run uses configs/smoke.py (tiny DenseNet, toy data, 32x32) and a shared
persistent XLA compilation cache so repeated runs skip most compile time.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import (COMMON, GUARD, ROOT, SMOKE, main_env, restore_latest, run_main,  # noqa: F401
                     train_log)


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
  from cmfl_jax import score_files
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


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def two_processes(workdir, *args, cache_dir, logs: Path):
  """Processes 0 and 1 of one `--mode=train` run (gloo on CPU), each writing
  its output to logs/p<i>.log (files: no pipe can fill and block a process);
  any process still running at the end is killed."""
  port, env = _free_port(), main_env(cache_dir)
  logs.mkdir(parents=True, exist_ok=True)
  procs = []
  try:
    for i in range(2):
      with open(logs / f"p{i}.log", "w") as out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "cmfl_jax.main", f"--config={SMOKE}", f"--workdir={workdir}",
             "--mode=train", *COMMON, f"--coordinator_address=127.0.0.1:{port}",
             "--num_processes=2", f"--process_id={i}", *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True))
    yield procs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def finish(procs, logs: Path, timeout: float = 500) -> list[tuple[int, str]]:
  """(exit status, output) of each process, once all have exited."""
  return [(p.wait(timeout=timeout), (logs / f"p{i}.log").read_text())
          for i, p in enumerate(procs)]


def _validation_lines(log: str) -> list[str]:
  return re.findall(r"step \d+: val_loss=.*", log)


#: Messages of the two ways a survivor learns that its peer died: a failed
#: collective (the peer's sockets closed: at once), or jax.distributed's
#: heartbeat timeout (a peer that vanished without closing them).
PEER_DIED = ("error: a collective operation failed",
             "Terminating process because the JAX distributed service detected fatal errors")


def test_two_processes_preemption_then_peer_failure_then_exact_resume(reference_run, tmp_path,
                                                                      cache_dir):
  """One two-process run through both failures (one run per phase keeps the
  suite short):
  1. SIGTERM reaches process 1 only (one preempted host) after step 5: both
     agree at the next save boundary (step 6, checkpoint_every_steps=3), save
     it once together and exit 143.
  2. The rerun resumes at 6; SIGKILL of process 1 after step 10: process 0
     exits with an error within the heartbeat timeout (not a hang).
  3. The rerun resumes from the last complete checkpoint and ends as an
     uninterrupted single-process run does (two-process training, its
     checkpoints and exact resume in one)."""
  from cmfl_jax import checkpointing
  ref_dir, _ = reference_run
  workdir, logs, heartbeat = str(tmp_path / "run"), tmp_path / "logs", 10
  latest = os.path.join(workdir, "checkpoints", "latest")
  with two_processes(workdir, "--config.train.debug_signal_at_step=5",
                     "--config.train.debug_signal_process=1", cache_dir=cache_dir,
                     logs=logs) as procs:
    (code0, log0), (code1, log1) = finish(procs, logs)
  assert code0 == code1 == 143, log0[-3000:] + log1[-3000:]
  assert "process 1 of 2" in log1 and "1 local / 2 global devices" in log0
  assert "received signal 15" in log1 and "received signal" not in log0
  for log in (log0, log1):
    assert "stop requested by process(es) [1]" in log
    assert "stopped by signal 15 at step 6" in log
  assert sorted(os.listdir(latest)) == ["4", "6"]  # nothing half-written beside them
  assert checkpointing.read_meta(checkpointing.make_managers(workdir)["latest"], 6)["step"] == 6
  # Keep-best is decided on each process from the global validation loss: the same.
  assert _validation_lines(log0) == _validation_lines(log1) != []

  with two_processes(workdir, "--config.train.debug_signal_at_step=10",
                     f"--config.train.debug_signal={int(signal.SIGKILL)}",
                     "--config.train.debug_signal_process=1",
                     f"--heartbeat_timeout_seconds={heartbeat}", cache_dir=cache_dir,
                     logs=logs) as procs:
    assert procs[1].wait(timeout=500) == -signal.SIGKILL
    died = time.monotonic()
    code0 = procs[0].wait(timeout=heartbeat + 30)  # a hang raises TimeoutExpired
    waited = time.monotonic() - died
  log0 = (logs / "p0.log").read_text()
  assert "resumed from latest step 6" in log0
  assert code0 != 0 and any(m in log0 for m in PEER_DIED), log0[-3000:]
  assert waited < heartbeat + 30
  complete = sorted(int(d) for d in os.listdir(latest) if d.isdigit())
  assert max(complete) in (8, 9)  # the epoch end or the periodic save before the kill

  with two_processes(workdir, cache_dir=cache_dir, logs=logs) as procs:
    results = finish(procs, logs)
  assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
  assert all(f"resumed from latest step {max(complete)}" in log for _, log in results)
  losses = {l["step"]: l["train/loss"] for l in train_log(workdir)}  # the last run's win
  assert sorted(losses) == list(range(1, 13))
  np.testing.assert_allclose([losses[s] for s in range(1, 13)],
                             [l["train/loss"] for l in train_log(ref_dir)], rtol=1e-4)


def test_stop_is_agreed_every_n_steps_and_at_boundaries_only_with_several_processes(
    monkeypatch):
  """Where `_StopSignals.agreed` runs the collective: never with one process
  (its own flag decides at once), else every stop_check_every_steps steps and
  at every save/epoch boundary; all processes make the same calls."""
  from cmfl_jax import train
  calls = []
  monkeypatch.setattr(train, "_agree", lambda received: calls.append(received) or received)
  signals = train._StopSignals(check_every=4)
  signals.received = signal.SIGINT
  assert signals.agreed(1, boundary=False) == signal.SIGINT and calls == []
  monkeypatch.setattr(train.jax, "process_count", lambda: 2)
  decided = [s for s in range(1, 10) if signals.agreed(s, boundary=s == 3)]
  assert decided == [3, 4, 8] and calls == [signal.SIGINT] * 3
  assert train.Interrupted(signal.SIGINT, 3).exit_status == 130
  assert train.Interrupted(signal.SIGTERM, 3).exit_status == 143


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
  from cmfl_jax import evaluate, train
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


def write_broken_files(folder: Path, prefix: str = "") -> dict[str, Path]:
  """Files predict must report, not score: kind -> path (the last one missing)."""
  import io
  from PIL import Image
  img = np.random.default_rng(5).integers(0, 255, (40, 40, 3), np.uint8)
  encoded = {}
  for fmt in ("JPEG", "PNG", "BMP"):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt)
    encoded[fmt] = buf.getvalue()
  files = {"truncated JPEG": ("truncated.jpg", encoded["JPEG"][:len(encoded["JPEG"]) // 2]),
           "truncated PNG": ("truncated.png", encoded["PNG"][:len(encoded["PNG"]) // 2]),
           "empty": ("empty.png", b""), "text": ("text.png", b"not an image at all\n"),
           # Neither the header check nor the truncation check sees this one: TF's decoder does.
           "truncated BMP": ("truncated.bmp", encoded["BMP"][:len(encoded["BMP"]) // 2])}
  out = {}
  for kind, (name, data) in files.items():
    out[kind] = folder / f"{prefix}{name}"
    out[kind].write_bytes(data)
  out["missing"] = folder / f"{prefix}missing.jpg"
  return out


#: The start of each broken file's error row.
BROKEN_REASONS = {"truncated JPEG": "error: not a readable image (truncated JPEG",
                  "truncated PNG": "error: not a readable image (truncated PNG",
                  "empty": "error: empty (0-byte) file",
                  "text": "error: not a readable image (UnidentifiedImageError",
                  "truncated BMP": "error: not a readable image (TF: ",
                  "missing": "error: missing file"}


def test_predict_scores_files_like_eval_and_reports_broken_ones(reference_run, tmp_path,
                                                                  cache_dir):
  """The command line: broken files sorted in among 16 good ones (two
  batches), one row each in input order, the others scored as --mode=eval
  scored them, exit status 1, throughput in the closing log line."""
  import csv
  import runpy
  from PIL import Image
  from cmfl_jax import score_files
  from cmfl_jax.data import sources
  workdir, _ = reference_run
  config = runpy.run_path(SMOKE)["get_config"]()
  splits, _ = sources.load_splits(config.data, ["eval"])
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i, img in enumerate(splits["eval"].images):
    Image.fromarray(img).save(folder / f"{i:03d}.png")
  broken = {**{k: p for k, p in write_broken_files(folder, "003_").items() if k != "missing"},
            "missing": tmp_path / "missing.jpg"}
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-m", "cmfl_jax.predict", f"--workdir={workdir}", str(folder),
       str(tmp_path / "broken.png"), str(broken["missing"])],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  rows = list(csv.DictReader(proc.stdout.splitlines()))
  assert len(rows) == 16 + len(broken) + 1
  in_folder = sorted(broken[k].name for k in broken if k != "missing")
  assert [os.path.basename(r["path"]) for r in rows] == (
      ["000.png", "001.png", "002.png", "003.png", *in_folder]
      + [f"{i:03d}.png" for i in range(4, 16)] + ["broken.png", "missing.jpg"])
  by_name = {os.path.basename(r["path"]): r for r in rows}
  for kind, path in broken.items():
    assert by_name[path.name]["verdict"].startswith(BROKEN_REASONS[kind]), by_name[path.name]
    assert by_name[path.name]["score"] == "" == by_name[path.name]["p_real_calibrated"]
  assert by_name["broken.png"]["verdict"].startswith("error: not a readable image")
  good = [r for r in rows if r["score"]]
  calibrated = [(float(r["score"]), float(r["p_real_calibrated"])) for r in good]
  assert all((a < c) == (b < d) for (a, b), (c, d) in zip(calibrated, calibrated[1:])
             if a != c)  # the calibration keeps the order of the scores
  step = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints", "best")))
  _, eval_scores, _ = score_files.read_scores(
      os.path.join(workdir, "eval", f"best_{step}", "eval_scores.csv"))
  got = np.asarray([float(r["score"]) for r in good])
  np.testing.assert_allclose(got, eval_scores, atol=1e-6)
  from cmfl_jax import checkpointing
  kind, best_step = checkpointing.select_step(workdir, "best")
  thr = checkpointing.read_meta(checkpointing.make_managers(workdir)[kind], best_step)[
      "dev_threshold"]
  assert 0.0 <= thr <= 1.0
  for r, s in zip(good, got):  # unsure (with its reason) near the threshold or if unstable
    assert r["verdict"] == ("real" if s >= thr else "synthetic") and r["reason"] == "" or (
        r["verdict"] == "unsure" and r["reason"]), r
  assert all(by_name[p.name]["reason"] == "" for p in broken.values())
  summary = json.loads(next(l for l in proc.stderr.splitlines()
                            if '"images_per_sec"' in l).split("] ", 1)[1])
  assert summary["scored"] == 16 and summary["failed"] == len(broken) + 1
  assert summary["images_per_sec"] > 0


def test_predict_streams_in_input_order_and_holds_at_most_two_batches(reference_run, tmp_path,
                                                                       monkeypatch):
  """predict() over 5+ batches of files with broken ones in between: the
  good ones (PNG and JPEG) get the scores of the batch evaluation path
  (`evaluate_split` on a file split), the broken ones an error row in place,
  and no more than two batches of decoded images are ever held (counted)."""
  from PIL import Image
  from cmfl_jax import evaluate, predict
  from cmfl_jax.data import sources
  from cmfl_jax.data.split import Files, Split
  workdir, _ = reference_run
  config = predict.config_from_checkpoint(workdir, "best")
  batch_size = config.train.eval_batch_size
  good = []
  for i, img in enumerate(sources.load_splits(config.data, ["eval"])[0]["eval"].images):
    good.append(str(tmp_path / f"{i}.{'jpg' if i % 5 == 0 else 'png'}"))
    Image.fromarray(img).save(good[-1])
  broken = write_broken_files(tmp_path)
  paths, kinds = list(good * 3), [None] * 3 * len(good)
  for j, (kind, path) in enumerate(broken.items()):
    paths.insert(7 * j + 2, str(path))
    kinds.insert(7 * j + 2, kind)
  assert len(paths) > 5 * batch_size

  decoded = []
  file_batches = predict._file_batches

  def counted(*args):
    for names, images, reasons in file_batches(*args):
      assert len(names) == len(images) == len(reasons) <= batch_size
      decoded.append(len(images))
      yield names, images, reasons

  monkeypatch.setattr(predict, "_file_batches", counted)
  predictions = predict.predict(workdir, paths)
  rows, held = [], []
  for row in predictions.rows:
    rows.append(row)
    held.append(sum(decoded) - len(rows))  # decoded, not yet handed out
  assert len(decoded) > 5 and max(held) <= 2 * batch_size, (decoded, held)
  assert [r["path"] for r in rows] == paths
  for row, kind in zip(rows, kinds):
    if kind is None:
      assert "error" not in row and row["verdict"] in ("real", "synthetic", "unsure")
    else:
      assert row["error"].startswith(BROKEN_REASONS[kind]) and "score" not in row, row

  state, eval_fn, mesh, _, _ = evaluate.restore_for_eval(config, workdir, "best")
  split = Split("files", np.zeros(len(good), np.int32), np.asarray(["x"] * len(good)),
                Files(np.asarray(good)))
  want = evaluate.evaluate_split(eval_fn, state, split, config, mesh)["scores"]["joint"]
  got = np.asarray([r["score"] for r, kind in zip(rows, kinds) if kind is None])
  np.testing.assert_allclose(got, np.tile(want, 3), atol=1e-6)


def test_predict_loader_decodes_png_as_pil_and_survives_unforeseen_decode_errors(
    tmp_path, monkeypatch):
  """The tf.data loader gives PIL's pixels for 8-bit PNGs of every mode; a
  decode error the checks miss (here: all of them, the truncation check
  switched off) costs only its own row, in place."""
  import ml_collections
  from PIL import Image
  import tensorflow as tf
  from cmfl_jax import predict
  from cmfl_jax.data import ops, readers
  img = np.random.default_rng(2).integers(0, 255, (24, 30, 3), np.uint8)
  good = []
  for mode in ("RGB", "RGBA", "L", "LA", "P"):
    good.append(str(tmp_path / f"{mode}.png"))
    Image.fromarray(img).convert(mode).save(good[-1])
  broken = write_broken_files(tmp_path)
  paths = [good[0], str(broken["truncated PNG"]), *good[1:3], str(broken["truncated JPEG"]),
           *good[3:], str(broken["missing"])]
  data = ml_collections.ConfigDict({"min_side": 0, "max_pixels": 10 ** 8, "image_size": 16,
                                    "aligned": True})
  geometry = ops.Geometry(16, True)
  want = {}
  for path in good:
    with Image.open(path) as im:
      want[path] = np.asarray(ops.resize_and_crop(tf.constant(readers.pil_to_rgb8(im)), geometry))
  for foreseen in (True, False):
    if not foreseen:
      monkeypatch.setattr(predict.readers, "truncation", lambda data: None)
    load = predict.file_loader(geometry, data)
    out = [(n, i, r) for names, images, reasons in predict._file_batches(paths, load, 3)
           for n, i, r in zip(names, images, reasons)]
    assert [n for n, _, _ in out] == paths
    for name, image, reason in out:
      if name in want:
        assert reason == "" and np.array_equal(image, want[name]), name
      elif name.endswith("missing.jpg"):
        assert reason == "missing file"
      else:
        assert reason.startswith("not a readable image (truncated" if foreseen
                                 else "not a readable image (TF: "), reason


def test_param_count_counts_the_trainable_parameters():
  import importlib.util

  from flax import nnx

  from cmfl_jax import models, steps
  spec = importlib.util.spec_from_file_location("smoke", SMOKE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  state, programs = steps.create_train_state(module.get_config(), steps.make_mesh())
  model = nnx.merge(programs.train_graphdef, state.params, state.batch_stats)
  assert models.count_params(state.params) == models.count_params(model) > 0


def test_cpu_matmul_choice_changes_the_products_not_the_results():
  import re
  import runpy

  import jax
  import jax.numpy as jnp

  from cmfl_jax import backend, models, steps
  config, mesh = runpy.run_path(SMOKE)["get_config"](), steps.make_mesh()
  state, programs = steps.create_train_state(config, mesh)
  batch = {"image": np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
           "label": np.arange(8, dtype=np.int32) % 2, "mask": np.ones(8, bool)}
  outputs, texts = {}, {}
  for choice in backend.CPU_MATMUL:
    config.model.cpu_matmul = choice
    options = backend.step_compiler_options(models.ModelConfig.from_config(config.model), mesh)
    train_fn, eval_fn = steps.compile_steps(programs, config.loss, mesh, state, options)
    for kind, fn in (("eval", eval_fn), ("train", train_fn)):
      compiled = fn.lower(state, batch).compile()
      fresh = jax.tree.map(jnp.copy, state)  # the train step donates its input
      out = compiled(fresh, batch)
      if kind == "train":  # the loss and BN statistics; Adam's first update is
        out = (out[1], out[0].batch_stats)  # ~lr * sign(grad), even for a ~0 gradient
      texts[kind, choice], outputs[kind, choice] = compiled.as_text(), out

  def in_ynn_fusions(text):
    """The bodies of the computations that YNNPACK fusions call."""
    called = set(re.findall(r"%ynn_fusion[\w.]* = .*calls=%([\w.\-]+)", text))
    bodies = re.split(r"\n(?=\S)", text)
    return "\n".join(b for b in bodies if b.split(" ")[0].lstrip("%") in called)

  # "eigen": no product in YNNPACK, only the training step's reductions.
  assert "ynn_fusion" not in texts["eval", "eigen"]
  assert " reduce(" in in_ynn_fusions(texts["train", "eigen"])
  assert " dot(" not in in_ynn_fusions(texts["train", "eigen"])
  assert " dot(" in in_ynn_fusions(texts["train", "ynnpack"])
  assert " dot(" in in_ynn_fusions(texts["eval", "ynnpack"])
  for kind in ("train", "eval"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 outputs[kind, "eigen"], outputs[kind, "ynnpack"])
  config.model.cpu_matmul = "mkl"
  with pytest.raises(ValueError, match="cpu_matmul"):
    models.ModelConfig.from_config(config.model)
  with pytest.raises(ValueError, match="cpu_matmul"):
    backend.cpu_matmul_in_effect("mkl", "cpu")


def test_cpu_matmul_is_ignored_where_xla_lacks_the_option(monkeypatch):
  from cmfl_jax import backend, models, steps
  model = models.ModelConfig(cpu_matmul="eigen")
  train_options, eval_options = backend.step_compiler_options(model, steps.make_mesh())
  assert train_options and eval_options == {"xla_cpu_experimental_ynn_fusion_type": ""}
  monkeypatch.setattr(backend, "_xla_cpu_knows_ynn_option", lambda: False)  # e.g. jax 0.7
  assert backend.step_compiler_options(model, steps.make_mesh()) == (None, None)
  assert backend.cpu_matmul_in_effect("eigen", "cpu") == "xla-default"
  assert backend.cpu_matmul_in_effect("eigen", "gpu") is None


# ----------------------------------------------------------------------------
# Damaged checkpoints and failing saves (nothing is lost, no traceback)
# ----------------------------------------------------------------------------
def _data_files(step_dir):
  """Every array data file of a step (OCDBT may keep several, not all referenced
  by the newest manifest: damaging one alone may change nothing)."""
  files = [p for p in Path(step_dir, "state").rglob("*")
           if p.is_file() and "ocdbt.process_0/d/" in str(p)]
  assert files
  return files


def _truncate(step_dir):
  for path in _data_files(step_dir):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_metadata(step_dir):
  os.remove(Path(step_dir, "state", "_METADATA"))


def _flip_byte(step_dir):
  for path in _data_files(step_dir):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [(_truncate, "bytes, .* were saved"),
                                           (_drop_metadata, "state/_METADATA is missing"),
                                           (_flip_byte, "does not match its saved SHA-256")])
def test_damage_is_found_before_orbax_reads(reference_run, tmp_path, damage, reason):
  """The step's file list (sizes, SHA-256) catches each kind of damage before
  any read is handed to Orbax (no abstract state is even needed)."""
  from cmfl_jax import checkpointing
  workdir = tmp_path / "run"
  shutil.copytree(reference_run[0], workdir)
  manager = checkpointing.make_managers(str(workdir))["latest"]
  newest = max(manager.all_steps())
  assert checkpointing.verify_files(str(workdir / "checkpoints" / "latest" / str(newest))) is None
  damage(workdir / "checkpoints" / "latest" / str(newest))
  with pytest.raises(checkpointing.CheckpointError, match=f"latest/{newest} is damaged: .*{reason}"):
    checkpointing.restore(manager, newest, None)


def test_damaged_newest_checkpoint_resumes_from_the_one_before(reference_run, tmp_path,
                                                               cache_dir):
  workdir = tmp_path / "run"
  shutil.copytree(reference_run[0], workdir)
  latest = workdir / "checkpoints" / "latest"
  steps_before = sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())
  assert len(steps_before) >= 2  # README: two latest checkpoints are kept for this
  newest, previous = steps_before[-1], steps_before[-2]
  _flip_byte(latest / str(newest))
  proc = run_main(str(workdir), "--mode=train", cache_dir=cache_dir)
  assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
  assert f"latest/{newest}" in proc.stderr and "moved it to" in proc.stderr
  assert f"resumed from latest step {previous}" in proc.stderr
  broken = list((workdir / "checkpoints" / "broken").iterdir())
  assert [p.name.split("_")[:2] for p in broken] == [["latest", str(newest)]]  # kept, not deleted
  log = train_log(str(workdir))
  resumed = [l["step"] for l in log if l["step"] > previous]
  assert resumed[-(newest - previous):] == list(range(previous + 1, newest + 1))
  assert newest in [int(p.name) for p in latest.iterdir() if p.name.isdigit()]


def test_broken_best_checkpoint_gives_a_clear_error(reference_run, tmp_path, cache_dir):
  workdir = tmp_path / "run"
  shutil.copytree(reference_run[0], workdir)
  (best,) = [p for p in (workdir / "checkpoints" / "best").iterdir() if p.name.isdigit()]
  _truncate(best)
  proc = run_main(str(workdir), "--mode=eval", cache_dir=cache_dir, check=False)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
  error = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert error and f"best/{best.name}" in error[0] and "latest (steps" in error[0]


def test_failing_save_stops_clearly_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
  import runpy

  import orbax.checkpoint as ocp

  from cmfl_jax import checkpointing, train
  config = runpy.run_path(SMOKE)["get_config"]()
  config.train.num_epochs = 2
  real_save, calls = ocp.CheckpointManager.save, []

  def save(self, step, *args, **kwargs):
    calls.append(step)
    if len(calls) > 2:
      raise OSError(28, "No space left on device")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  workdir = str(tmp_path / "run")
  with pytest.raises(checkpointing.CheckpointError, match="No space left.*kept"):
    train.train_and_evaluate(config, workdir)
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  kept = checkpointing.available(workdir)["latest"]
  assert kept == sorted(calls[:2]) or set(kept) <= set(calls[:2]) and kept
  mngr = checkpointing.make_managers(workdir)["latest"]
  state = train.steps.create_train_state(config, train.steps.make_mesh(), abstract=True)[0]
  restored, meta = checkpointing.restore(mngr, max(kept), state)
  assert meta["step"] == max(kept) and int(restored.step) == max(kept)


# ----------------------------------------------------------------------------
# Command-line mistakes: one line, exit 2, no traceback
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("args, names", [
    (["--config=configs/nope.py"], ["nope.py"]),
    (["--config.model.arhc=one_stream"], ["arhc", "arch"]),
    (["--config.train.batch_size=abc"], ["batch_size"]),
    (["--config.model.arch=foo"], ["model.arch", "two_stream"]),
    (["--config.data.image_size=4"], ["data.image_size", "minimum"]),
])
def test_main_config_errors_are_one_line(tmp_path, args, names, cache_dir):
  if args[0].startswith("--config="):
    cmd = [sys.executable, "-m", "cmfl_jax.main", *args, f"--workdir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  else:
    proc = run_main(str(tmp_path), *args, cache_dir=cache_dir, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  (line,) = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert all(n in line for n in names), line


def test_validate_names_the_key_and_the_choices():
  import runpy

  from cmfl_jax import config as config_lib
  for key, value, names in [("data.source", "bar", ["data.source", "csv"]),
                            ("loss.objective", "baz", ["loss.objective", "cmfl"]),
                            ("model.ops", "cudnn", ["model.ops", "gemm"]),
                            ("data.balance", "x", ["data.balance", "oversample"]),
                            ("train.batch_size", 6, ["train.batch_size", "4 devices"]),
                            ("eval.unsure_error", 1.5, ["eval.unsure_error", "[0, 1)"])]:
    config = runpy.run_path(SMOKE)["get_config"]()
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.validate(config, num_devices=4)
    assert all(n in str(e.value) for n in names), str(e.value)
  config_lib.validate(runpy.run_path(SMOKE)["get_config"](), num_devices=4)  # the smoke run is fine


def test_predict_on_a_workdir_without_checkpoints(tmp_path):
  (tmp_path / "x.png").write_bytes(b"")
  for args, code, text in [([f"--workdir={tmp_path}"], 1, "no checkpoints"),
                           ([f"--workdir={tmp_path}", "--wrkdir=x"], 2, "wrkdir")]:
    proc = subprocess.run([sys.executable, "-m", "cmfl_jax.predict", *args, str(tmp_path / "x.png")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert any(l.startswith("error:") and text in l for l in proc.stderr.splitlines())


def test_predict_align_scores_raw_photographs_and_reports_no_face(reference_run, tmp_path):
  """predict --align: photographs are detected and aligned (as cmfl_jax.align
  does) before scoring; rows carry the face box, photographs without a face
  get a "no face" row and the others are still scored."""
  import csv
  import io
  pytest.importorskip("mtcnn")
  skdata = pytest.importorskip("skimage.data")
  from PIL import Image
  workdir, _ = reference_run
  Image.fromarray(skdata.astronaut()).save(tmp_path / "astronaut.png")
  noise = np.random.default_rng(1).integers(0, 255, (120, 150, 3), np.uint8)
  Image.fromarray(noise).save(tmp_path / "noise.png")
  proc = subprocess.run(
      [sys.executable, "-m", "cmfl_jax.predict", f"--workdir={workdir}", "--align",
       str(tmp_path / "astronaut.png"), str(tmp_path / "noise.png")],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"))
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  rows = {os.path.basename(r["path"]): r for r in csv.DictReader(io.StringIO(proc.stdout))}
  face = rows["astronaut.png"]
  assert 0.0 <= float(face["score"]) <= 1.0 and face["verdict"] in ("real", "synthetic", "unsure")
  assert len(face["face_box"].split()) == 4 and float(face["face_score"]) > 0.9
  assert face["faces_found"] == "1"
  assert rows["noise.png"]["score"] == "" and rows["noise.png"]["verdict"].startswith("no face")


def test_validation_subset_during_training_full_dev_split_for_the_stored_threshold(tmp_path):
  """train.val_examples: each epoch validates on the same seeded, stratified
  subset; at the end best and latest carry statistics of the whole dev split."""
  import runpy

  from cmfl_jax import evaluate, metrics, train
  from cmfl_jax.data import sources
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
    joint = evaluate.evaluate_split(eval_fn, state, dev, config, mesh)["scores"]["joint"]
    assert meta["dev_threshold"] == pytest.approx(metrics.eer(dev.labels, joint)[1], abs=1e-6)


# ----------------------------------------------------------------------------
# Remote workdirs (gs:// on TPU pods): no local-filesystem call on the workdir
# ----------------------------------------------------------------------------
def test_workdir_guard_records_local_calls_from_cmfl_jax_code_only(tmp_path):
  """The guard under `reference_run` must catch what it is there to catch."""
  log, workdir = tmp_path / "guard.log", tmp_path / "run"
  workdir.mkdir()
  snippet = "\n".join([
      f"os.path.exists({str(workdir / 'a')!r})",
      f"open({str(workdir / 'b')!r}, 'w').close()",
      f"pathlib.Path({str(workdir)!r}, 'c').write_text('')",
      f"os.makedirs({str(tmp_path / 'elsewhere')!r})"])  # not the workdir
  probe = tmp_path / "probe.py"
  probe.write_text("\n".join([
      "import os, pathlib, sys",
      f"sys.path.insert(0, {str(GUARD.parent)!r})",
      "import workdir_guard",
      f"workdir_guard.install({str(log)!r}, {str(workdir)!r})",
      f"exec({snippet!r}, {{'__name__': 'cmfl_jax.fake', 'os': os, 'pathlib': pathlib}})",
      f"os.path.exists({str(workdir / 'd')!r})"]))  # not cmfl_jax code
  subprocess.run([sys.executable, str(probe)], check=True)
  lines = log.read_text().splitlines()
  assert [l.split(": ")[1].split("(")[0] for l in lines] == [
      "posixpath.exists", "builtins.open", "Path.write_text"], lines
  assert all(l.startswith("cmfl_jax.fake:") for l in lines)


def test_reference_run_never_touched_its_workdir_through_the_local_filesystem(reference_run):
  workdir, _ = reference_run
  log = Path(workdir + ".guard.log")
  assert not log.exists(), log.read_text()


def test_non_posix_workdir_train_eval_reports_and_audit(tmp_path, monkeypatch, caplog):
  """A whole train + eval run with its workdir on TF's in-memory filesystem
  (`ram://`, a non-local scheme available offline): TensorBoard, logs, score
  files, reports, plots, the audit and the data reports all land there, and
  nothing on the local disk. Only the checkpoints are redirected to a local
  directory, since Orbax cannot use `ram://` (README, "Remote workdirs").
  The data has a storage shortcut (bona fide PNG, attacks JPEG): the audit
  warns, with its remedy, before the first step."""
  import logging
  import runpy

  import tensorflow as tf

  from cmfl_jax import checkpointing, evaluate, train
  from test_input_pipeline import write_dataset
  data_root, proto = write_dataset(str(tmp_path / "d"), n_per_class=12, size=32)
  config = runpy.run_path(SMOKE)["get_config"]()
  config.data.source, config.data.data_root, config.data.protocol_dir = "csv", data_root, proto
  config.data.audit_cache = str(tmp_path / "cache.sqlite")
  config.train.num_epochs, config.train.log_every_steps = 1, 1
  config.eval.conditions = ("jpeg:50",)
  workdir = f"ram://{tmp_path.name}/run"
  local_checkpoints = checkpointing.checkpoint_dir

  def checkpoint_dir(path, kind):
    assert path == workdir
    return local_checkpoints(str(tmp_path / "ckpt"), kind)

  monkeypatch.setattr(checkpointing, "checkpoint_dir", checkpoint_dir)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)  # a path mangled to a local one ("ram:/...") would land here
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(config, workdir)
  lines = [r.getMessage() for r in caplog.records]
  warn = [i for i, l in enumerate(lines) if "DATA AUDIT" in l and "Shortcut risk" in l]
  first_step = [i for i, l in enumerate(lines) if l.startswith("step 1:")]
  assert warn and first_step and warn[0] < first_step[0], lines
  assert "format" in lines[warn[0]] and any("data.reencode" in l for l in lines)
  assert any("DATA AUDIT" in l and "subjects shared" in l for l in lines)
  results = evaluate.evaluate_checkpoint(config, workdir)
  out = results["out_dir"]
  assert out.startswith(workdir + "/eval/")
  want = [f"{workdir}/{name}" for name in ("train_log.jsonl", "data_report.json", "audit.json",
                                           "audit.md", "best_val_scores.csv",
                                           "eval_data_report.json")]
  want += [f"{out}/metrics.json", f"{out}/report.md", f"{out}/eval_scores.csv",
           f"{out}/eval@jpeg50_scores.csv"]
  missing = [p for p in want if not tf.io.gfile.exists(p)]
  assert not missing, missing
  assert tf.io.gfile.glob(f"{workdir}/tensorboard/events.out.tfevents.*")
  assert tf.io.gfile.glob(f"{out}/*.png")
  report = json.loads(tf.io.gfile.GFile(f"{workdir}/data_report.json").read())
  assert any(f["kind"] == "shortcut" for f in report["audit"]["findings"])
  logged = [json.loads(l)["step"] for l in
            tf.io.gfile.GFile(f"{workdir}/train_log.jsonl").read().splitlines()]
  assert logged[:3] == [1, 2, 3]
  assert json.loads(tf.io.gfile.GFile(f"{out}/metrics.json").read())["splits"]["eval"]
  assert not list(cwd.iterdir())
  assert checkpointing.available(workdir)["latest"] == [3]
