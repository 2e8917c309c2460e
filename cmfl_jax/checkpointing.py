"""Orbax checkpoints of the full train state, in two managers under the workdir.

* ``checkpoints/latest``: periodic and end-of-epoch saves (async), a few kept;
  restarting a run resumes from the newest one.
* ``checkpoints/best``: saved at epoch end when the validation loss improves;
  one kept. This is the model the official code keeps.

Each checkpoint holds ``state`` (params, batch stats, optimizer state, step,
RNG; Orbax's standard array format, so restoring never executes code) and
``meta`` (JSON: epoch, data-iterator position, validation loss, config,
optional dev threshold). Orbax writes to a temporary directory and renames
it when complete, so an interrupted save never shadows a good checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp
import tensorflow as tf

LATEST = "latest"
BEST = "best"


def checkpoint_dir(workdir: str, kind: str) -> str:
  if "://" not in workdir:  # local paths absolute; gs:// and friends as given
    workdir = os.path.abspath(workdir)
  return os.path.join(workdir, "checkpoints", kind)


def _barrier_prefix(kind: str) -> ocp.options.MultiprocessingOptions:
  # Both managers may save the same step; distinct barrier names keep their
  # multi-host commit barriers apart.
  return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=kind)


def make_managers(workdir: str, keep_latest: int = 2) -> dict[str, ocp.CheckpointManager]:
  """The `latest` and `best` managers for a workdir (created if needed)."""
  latest = ocp.CheckpointManager(
      checkpoint_dir(workdir, LATEST),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep_latest, create=True, enable_async_checkpointing=True,
          multiprocessing_options=_barrier_prefix(LATEST)),
      item_names=("state", "meta"))
  best = ocp.CheckpointManager(
      checkpoint_dir(workdir, BEST),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda m: m["val_loss"], best_mode="min",
          keep_checkpoints_without_metrics=False, create=True,
          enable_async_checkpointing=True, multiprocessing_options=_barrier_prefix(BEST)),
      item_names=("state", "meta"))
  return {LATEST: latest, BEST: best}


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict,
         metrics: dict | None = None) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)),
               metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """Restores `step` into the structure/sharding of `abstract_state`."""
  out = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return out["state"], dict(out["meta"])


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


def select_step(workdir: str, which: str | int) -> tuple[str, int]:
  """Resolves "best" | "latest" | a step number to (kind, step), with clear errors."""
  which = str(which)
  kinds = (BEST, LATEST) if which not in (BEST, LATEST) else (which,)
  for kind in kinds:
    directory = checkpoint_dir(workdir, kind)
    if not tf.io.gfile.isdir(directory):
      continue
    mngr = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                 options=ocp.CheckpointManagerOptions(read_only=True))
    steps = mngr.all_steps()
    if which in (BEST, LATEST) and steps:
      return kind, max(steps)  # the best manager keeps only the best one
    if which.isdigit() and int(which) in steps:
      return kind, int(which)
  raise FileNotFoundError(f"no checkpoint {which!r} under {os.path.join(workdir, 'checkpoints')}")

