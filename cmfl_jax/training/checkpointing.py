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

Once a save has committed, the size and SHA-256 of every file of the step go
into ``files.json`` beside it; a restore checks them before Orbax reads
anything, so damage is found without a half-failed read (whose abandoned
background reads would print errors), and the state's fingerprint is checked
after.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

LATEST = "latest"
BEST = "best"
BROKEN = "broken"  # unreadable checkpoints are moved here, never deleted
FILES = "files.json"  # per step: {relative path: [size, sha256]} of its committed files
DEV = "dev.json"  # per step, optional: dev statistics refitted after the save (overrides meta)


class CheckpointError(RuntimeError):
  """A checkpoint cannot be read or written; the message says which and why."""


def fingerprint(state: Any) -> str:
  """SHA-256 over every array of `state` (this process's copy), in tree order:
  stored in the metadata at save and compared after a restore, so damage that
  the storage layer does not notice (a flipped byte) is caught too."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    local = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
    digest.update(np.ascontiguousarray(np.asarray(local)).tobytes())
  return digest.hexdigest()


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


def _step_files(step_dir: str) -> dict[str, list]:
  """{path relative to the step: [size, sha256]} of every file of a step."""
  out = {}
  for root, _, names in tf.io.gfile.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel in (FILES, DEV):
        continue
      digest = hashlib.sha256()
      with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 24):
          digest.update(chunk)
      out[rel] = [tf.io.gfile.stat(path).length, digest.hexdigest()]
  return out


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def _write_json(path: str, obj: Any) -> None:
  """Written whole or not at all (a temporary file renamed over `path`)."""
  with tf.io.gfile.GFile(path + ".tmp", "w") as f:
    json.dump(obj, f)
  tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def _seal(manager: ocp.CheckpointManager) -> None:
  """Writes `files.json` for every committed step that has none (process 0;
  call only when no save is running)."""
  if jax.process_index() != 0:
    return
  for step in manager.all_steps():
    directory = step_dir(manager, step)
    target = os.path.join(directory, FILES)
    if tf.io.gfile.isdir(directory) and not tf.io.gfile.exists(target):
      _write_json(target, _step_files(directory))


def verify_files(directory: str) -> str | None:
  """Why the files of a sealed step (its directory) differ from those
  recorded, or None (also for steps saved before sealing existed or
  interrupted before it)."""
  target = os.path.join(directory, FILES)
  if not tf.io.gfile.exists(target):
    return None
  with tf.io.gfile.GFile(target) as f:
    recorded = json.load(f)
  found = _step_files(directory)
  for rel, (size, digest) in sorted(recorded.items()):
    if rel not in found:
      return f"file {rel} is missing"
    if found[rel][0] != size:
      return f"file {rel} has {found[rel][0]} bytes, {size} were saved"
    if found[rel][1] != digest:
      return f"file {rel} does not match its saved SHA-256"
  return None


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict,
         metrics: dict | None = None) -> None:
  """Saves (asynchronously) `state` and `meta` + the state's fingerprint; a
  failure of this or of the previous, still running save raises CheckpointError."""
  meta = {**meta, "fingerprint": fingerprint(state)}
  wait(manager)  # the previous save commits (and is sealed) first
  try:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)),
                 metrics=metrics, force=True)
  except Exception as e:  # noqa: BLE001 - storage errors come in many types
    raise CheckpointError(f"saving step {step} to {manager.directory} failed "
                          f"({type(e).__name__}: {e}); the checkpoints saved before are kept: "
                          f"steps {manager.all_steps()}") from e


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the running save; its failure raises CheckpointError."""
  try:
    manager.wait_until_finished()
    _seal(manager)
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"saving to {manager.directory} failed ({type(e).__name__}: {e}); "
                          "the checkpoints saved before are kept") from e


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """Restores `step` into the structure/sharding of `abstract_state`; a
  checkpoint that cannot be read or does not match its fingerprint raises
  CheckpointError."""
  where = step_dir(manager, step)
  damage = verify_files(where)
  if damage is not None:
    raise CheckpointError(f"checkpoint {where} is damaged: {damage}")
  _drop_abandoned_read_errors()  # before the reads start: their errors may come early
  try:
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many types
    reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"checkpoint {where} cannot be read: {reason}") from e
  state, meta = out["state"], {**out["meta"], **read_dev(manager, step)}
  if meta.get("fingerprint") and fingerprint(state) != meta["fingerprint"]:
    raise CheckpointError(f"checkpoint {where} is damaged: its arrays do not match the "
                          "fingerprint saved with them")
  return state, meta


def _abandoned_read(unraisable) -> bool:
  where = f"{getattr(unraisable, 'object', '')}"
  return ("_read_array_index" in where or "Event loop is closed" in str(unraisable.exc_value)
          or "read array index" in str(unraisable.exc_value))


def _drop_abandoned_read_errors() -> None:
  """Installed once, before restoring. After a failed restore, Orbax's other
  reads of the same checkpoint finish
  in the background and fail too; Python would print each as "Exception
  ignored" (or asyncio's "Task exception was never retrieved") with a
  traceback. Those (the same damage, reported once above) are
  dropped; every other unraisable error still reaches the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, "cmfl_jax_filter", False):
    return

  def hook(unraisable):
    if not _abandoned_read(unraisable):
      previous(unraisable)

  hook.cmfl_jax_filter = True
  sys.unraisablehook = hook
  # Tasks of the same reads that finish with the error are logged by asyncio.
  logging.getLogger("asyncio").addFilter(
      lambda record: "_read_array_index" not in record.getMessage())


def move_aside(workdir: str, kind: str, step: int) -> str:
  """Moves a broken checkpoint to `checkpoints/broken/` (process 0; never
  deletes) and returns where it went."""
  source = os.path.join(checkpoint_dir(workdir, kind), str(step))
  target = os.path.join(os.path.dirname(checkpoint_dir(workdir, kind)), BROKEN,
                        f"{kind}_{step}_{int(time.time())}")
  if jax.process_index() == 0:
    tf.io.gfile.makedirs(os.path.dirname(target))
    tf.io.gfile.rename(source, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"moved aside {kind} {step}")
  return target


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  return {**meta, **read_dev(manager, step)}


def write_dev(manager: ocp.CheckpointManager, step: int, dev: dict) -> None:
  """Dev statistics fitted after `step` was saved (e.g. on the whole dev split
  when training validated on a subset); restores return them in the meta."""
  if jax.process_index() == 0:
    _write_json(os.path.join(step_dir(manager, step), DEV), dev)


def read_dev(manager: ocp.CheckpointManager, step: int) -> dict:
  """The step's `write_dev` statistics, {} if none."""
  path = os.path.join(step_dir(manager, step), DEV)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def available(workdir: str) -> dict[str, list[int]]:
  """{kind: steps} of the checkpoints under `workdir` (empty lists if none)."""
  out = {}
  for kind in (BEST, LATEST):
    directory = checkpoint_dir(workdir, kind)
    steps = []
    if tf.io.gfile.isdir(directory):
      steps = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True)
                                    ).all_steps()
    out[kind] = sorted(steps)
  return out


def describe(have: dict[str, list[int]]) -> str:
  """"best (step 12), latest (steps 8, 12)" or "no checkpoints"."""
  parts = [f"{kind} (step{'s' if len(s) > 1 else ''} {', '.join(map(str, s))})"
           for kind, s in have.items() if s]
  return ", ".join(parts) if parts else "no checkpoints"


def select_step(workdir: str, which: str | int) -> tuple[str, int]:
  """Resolves "best" | "latest" | a step number to (kind, step); the error
  lists what the workdir holds."""
  which = str(which)
  have = available(workdir)
  kinds = (BEST, LATEST) if which not in (BEST, LATEST) else (which,)
  for kind in kinds:
    steps = have[kind]
    if which in (BEST, LATEST) and steps:
      return kind, max(steps)  # the best manager keeps only the best one
    if which.isdigit() and int(which) in steps:
      return kind, int(which)
  raise FileNotFoundError(f"no checkpoint {which!r} under "
                          f"{os.path.join(workdir, 'checkpoints')}; it holds {describe(have)}")
