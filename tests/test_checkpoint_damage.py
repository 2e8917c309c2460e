"""Damaged checkpoints and failing saves (nothing is lost, no traceback)."""

import os
import shutil
from pathlib import Path

import pytest

from helpers import SMOKE, run_main, train_log


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
  from cmfl_jax.training import checkpointing
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

  from cmfl_jax.training import checkpointing, loop as train
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
