"""Training: the epoch loop around the compiled steps of `cmfl_jax.steps`,
with validation, keep-best/latest Orbax checkpoints, exact resume, clean
stops on signals and non-finite losses, and evaluation over whole splits.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from cmfl_jax import checkpointing, input_pipeline, metrics, score_files, steps, weights


class NonFiniteLossError(RuntimeError):
  """Training hit a NaN/inf loss or gradient; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
  """SIGTERM/SIGINT arrived; a checkpoint was saved and the run can be resumed."""


# ----------------------------------------------------------------------------
# Evaluation over a split
# ----------------------------------------------------------------------------
def evaluate_split(eval_fn: Callable, state: steps.TrainState, split: input_pipeline.Split,
                   config: ml_collections.ConfigDict, mesh: Mesh,
                   condition: str = "none") -> dict[str, Any]:
  """Mean loss terms and per-example scores (in split order) over one split,
  optionally post-processed by a robustness `condition`."""
  ds = input_pipeline.eval_dataset(split, config.data, config.train.eval_batch_size, condition)
  totals: dict[str, float] = {}
  scores: dict[str, list] = {}
  indices, masks = [], []
  for batch in input_pipeline.global_batches(ds, steps.batch_sharding(mesh)):
    sums, probs = eval_fn(state, batch)
    for k, v in jax.device_get(sums).items():
      totals[k] = totals.get(k, 0.0) + float(v)
    gathered = multihost_utils.process_allgather(
        {"probs": probs, "index": batch["index"], "mask": batch["mask"]}, tiled=True)
    for head, p in gathered["probs"].items():
      scores.setdefault(head, []).append(p)
    indices.append(gathered["index"])
    masks.append(gathered["mask"])
  count = totals.pop("count")
  keep = np.concatenate(masks)
  order = np.concatenate(indices)[keep]
  out = {k: v / count for k, v in totals.items()}
  out["count"] = int(count)
  out["scores"] = {}
  for head, chunks in scores.items():
    s = np.empty(len(split), np.float32)
    s[order] = np.concatenate(chunks)[keep]
    out["scores"][head] = s
  return out


# ----------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------
class _SignalFlag:
  """Records SIGTERM/SIGINT so the loop can checkpoint and stop cleanly."""

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: will checkpoint after this step and stop", signum)
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _is_main_process() -> bool:
  return jax.process_index() == 0


def summary_writer(workdir: str):
  """TensorBoard writer (TensorFlow's, already a dependency); process 0 only."""
  if not _is_main_process():
    return None
  return tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))


def write_scalars(writer, step: int, scalars: dict[str, float]) -> None:
  if writer is None:
    return
  with writer.as_default(step=step):
    for k, v in scalars.items():
      tf.summary.scalar(k, v)
  writer.flush()


def _progress(total: int, initial: int, desc: str, enabled: bool):
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
              disable=not (enabled and _is_main_process()))


def _append_jsonl(path: str | None, record: dict) -> None:
  if path is None:
    return
  with tf.io.gfile.GFile(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the latest checkpoint if any) and returns a summary."""
  tf.io.gfile.makedirs(workdir)
  mesh = steps.make_mesh()
  splits, skipped = input_pipeline.load_splits(
      config.data, [config.data.train_split, config.data.val_split])
  for line in input_pipeline.split_summary(splits):
    logging.info("data %s", line)
  input_pipeline.report_skipped(skipped, workdir)
  train_split = splits[config.data.train_split]
  val_split = splits[config.data.val_split]
  global_batch = config.train.batch_size
  if global_batch % jax.device_count():
    raise ValueError(f"batch_size {global_batch} must be divisible by the {jax.device_count()} "
                     "devices")
  steps_per_epoch = input_pipeline.steps_per_epoch(train_split, global_batch,
                                                   config.data.balance, config.seed)
  total_steps = steps_per_epoch * config.train.num_epochs
  if config.train.max_steps > 0:
    total_steps = min(total_steps, config.train.max_steps)

  managers = checkpointing.make_managers(workdir)
  best_val = math.inf
  latest_step = managers["latest"].latest_step()
  # Resuming restores into the abstract state: no initialisation is computed.
  state, programs = steps.create_train_state(config, mesh, abstract=latest_step is not None)
  train_fn, eval_fn = steps.compile_steps(programs, config, mesh, state)
  if latest_step is not None:
    state, meta = checkpointing.restore(managers["latest"], latest_step, state)
    if meta["steps_per_epoch"] != steps_per_epoch:
      raise ValueError(f"checkpoint at step {latest_step} was made with {meta['steps_per_epoch']} "
                       f"steps/epoch, the data/batch size now give {steps_per_epoch}; use a "
                       "new --workdir")
    best_val = meta.get("best_val_loss", math.inf)
    logging.info("resumed from %s step %d (epoch %d)", checkpointing.LATEST, latest_step,
                 latest_step // steps_per_epoch)
  elif config.model.get("pretrained"):  # a fresh run: ImageNet / official weights from a file
    state = weights.init_from_file(state, programs.train_graphdef, config.model.pretrained)
  step = int(jax.device_get(state.step))
  params_count = steps.param_count(state)
  logging.info("model %s/%s: %d parameters; %d steps/epoch, %d total", config.model.arch,
               config.loss.objective, params_count, steps_per_epoch, total_steps)
  writer = summary_writer(workdir)
  log_path = os.path.join(workdir, "train_log.jsonl") if _is_main_process() else None

  def meta_for(step_now: int, val_loss: float | None = None,
               dev_threshold: float | None = None) -> dict:
    return {"step": step_now, "epoch": step_now // steps_per_epoch,
            "step_in_epoch": step_now % steps_per_epoch, "steps_per_epoch": steps_per_epoch,
            "val_loss": val_loss, "best_val_loss": best_val, "dev_threshold": dev_threshold,
            "config": json.loads(config.to_json_best_effort())}

  def check_finite(state) -> None:
    bad = int(jax.device_get(state.nonfinite_step))
    if bad >= 0:
      managers["latest"].wait_until_finished()
      raise NonFiniteLossError(
          f"non-finite loss or gradient at step {bad}; training stopped and the update was "
          f"not applied. Last good checkpoints: {checkpointing.checkpoint_dir(workdir, 'latest')} "
          f"(steps {managers['latest'].all_steps()}). Lower the learning rate or check the data.")

  def stop_after_signal() -> None:
    managers["latest"].wait_until_finished()
    raise Interrupted(f"stopped by signal {signals.received} at step {step}; checkpoint saved, "
                      "rerun the same command to resume")

  history = []
  with _SignalFlag() as signals, _progress(total_steps, step, "train",
                                            config.train.progress_bar) as bar:
    while step < total_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      ds = input_pipeline.train_dataset(train_split, config.data, global_batch, config.seed,
                                        epoch, skip_batches=offset)
      window_start, window_steps, window_metrics = time.perf_counter(), 0, []
      for batch in input_pipeline.global_batches(ds, steps.batch_sharding(mesh)):
        state, step_metrics = train_fn(state, batch)
        step += 1
        window_steps += 1
        window_metrics.append(step_metrics)
        bar.update(1)
        if step == config.train.debug_signal_at_step:
          # Test hook: the real signal path (SIGTERM) or a hard kill (SIGKILL).
          jax.block_until_ready(state)
          os.kill(os.getpid(), config.train.debug_signal)
        if step % config.train.log_every_steps == 0 or step == total_steps:
          check_finite(state)
          means = {f"train/{k}": float(np.mean([m[k] for m in jax.device_get(window_metrics)]))
                   for k in window_metrics[0]}
          elapsed = time.perf_counter() - window_start
          means["train/images_per_sec"] = window_steps * global_batch / max(elapsed, 1e-9)
          means["train/learning_rate"] = config.optim.learning_rate
          write_scalars(writer, step, means)
          bar.set_postfix(loss=f"{means['train/loss']:.4f}",
                          img_s=f"{means['train/images_per_sec']:.1f}")
          logging.info("step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in means.items()))
          _append_jsonl(log_path, {"step": step, **means})
          window_start, window_steps, window_metrics = time.perf_counter(), 0, []
        epoch_done = step % steps_per_epoch == 0
        if signals.received is not None or step % config.train.checkpoint_every_steps == 0 \
            or epoch_done or step == total_steps:
          check_finite(state)
        if epoch_done or step == total_steps:
          break
        if signals.received is not None or step % config.train.checkpoint_every_steps == 0:
          checkpointing.save(managers["latest"], step, state, meta_for(step))
        if signals.received is not None:
          stop_after_signal()
      # End of an epoch (or of max_steps): validate, keep best and latest.
      val = evaluate_split(eval_fn, state, val_split, config, mesh)
      val_loss = float(val["loss"])
      if not math.isfinite(val_loss):
        raise NonFiniteLossError(f"non-finite validation loss at step {step}")
      improved = val_loss < best_val
      best_val = min(best_val, val_loss)
      record = {"step": step, "epoch": step / steps_per_epoch, "val_loss": val_loss,
                **{f"val_{k}": float(v) for k, v in val.items() if k.startswith("bce_")}}
      history.append(record)
      _append_jsonl(log_path, record)
      if improved and _is_main_process():
        score_files.write_scores(os.path.join(workdir, "best_val_scores.csv"), val_split,
                              val["scores"]["joint"])
      write_scalars(writer, step, {f"val/{k}": v for k, v in val.items()
                                    if k not in ("scores", "count")})
      logging.info("epoch %.2f step %d: val_loss=%.5f%s", step / steps_per_epoch, step, val_loss,
                   " (best)" if improved else "")
      # The dev-set EER threshold travels with the model (fixed operating point).
      dev_threshold = metrics.eer(val_split.labels, val["scores"]["joint"])[1]
      checkpointing.save(managers["latest"], step, state, meta_for(step, val_loss, dev_threshold))
      if improved:
        checkpointing.save(managers["best"], step, state, meta_for(step, val_loss, dev_threshold),
                           metrics={"val_loss": val_loss})
      if signals.received is not None:
        stop_after_signal()
  for m in managers.values():
    m.wait_until_finished()
  if writer is not None:
    writer.close()
  return {"steps": step, "best_val_loss": best_val, "history": history}
