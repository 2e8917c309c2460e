"""Remote workdirs (gs:// on TPU pods): no local-filesystem call on the
workdir."""

import json
import subprocess
import sys
from pathlib import Path

from helpers import GUARD, SMOKE


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
  directory, since Orbax cannot use `ram://` (docs/distributed.md, "Remote workdirs").
  The data has a storage shortcut (bona fide PNG, attacks JPEG): the audit
  warns, with its remedy, before the first step."""
  import logging
  import runpy

  import tensorflow as tf

  from cmfl_jax.evaluation import evaluate
  from cmfl_jax.training import checkpointing, loop as train
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
  # The absl logger itself too: an earlier in-process absl app may have set its level.
  with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="absl"):
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
