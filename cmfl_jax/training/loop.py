"""Training: the epoch loop around the compiled steps of `cmfl_jax.training.steps`,
with validation, keep-best/latest Orbax checkpoints, exact resume, and clean
stops on signals (agreed by every process: all save the same step) and
non-finite losses.

Reads top to bottom: data, state (fresh or resumed), then the loop, whose
"is it time to log / save / validate" decisions are named.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cmfl_jax import backend, models
from cmfl_jax.attribution import classes as attribution_classes, openset
from cmfl_jax.data import pipeline, sources
from cmfl_jax.data.auditing import configured as audit
from cmfl_jax.data.split import Split, split_summary
from cmfl_jax.evaluation import evaluate, metrics, score_files, stats
from cmfl_jax.models import torch_weights as weights
from cmfl_jax.training import checkpointing, losses, steps, summaries
from cmfl_jax.verdicts import selective


class NonFiniteLossError(RuntimeError):
  """Training hit a NaN/inf loss or gradient; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
  """SIGTERM/SIGINT arrived (on any process); every process saved the same
  step and stops, and the run can be resumed."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved, rerun the "
                     "same command to resume")
    self.signum = signum

  @property
  def exit_status(self) -> int:
    """The shell's status for a death by this signal (143 SIGTERM, 130 SIGINT)."""
    return 128 + self.signum


def _agree(received: int | None) -> int | None:
  """Every process's signal gathered: the same answer everywhere (the highest
  signal number, SIGTERM over SIGINT), or None when no process got one."""
  from jax.experimental import multihost_utils
  got = np.asarray(multihost_utils.process_allgather(np.int32(received or 0)))
  if not got.any():
    return None
  logging.warning("stop requested by process(es) %s (signals %s): every process saves this "
                  "step and stops", np.flatnonzero(got).tolist(), got[got > 0].tolist())
  return int(got.max())


class _StopSignals:
  """SIGTERM/SIGINT recorded here, and the stop decision every process shares.

  A signal may reach one host only (one preempted VM) while saves are
  collective, so the processes agree with one tiny all-gather every
  `check_every` steps and at every save and epoch end (`agreed`), and all
  save and stop at the same step. One process needs no agreement: its own
  flag decides, at every step, for free.
  """

  def __init__(self, check_every: int):
    self.check_every = check_every
    self.received: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> _StopSignals:
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    logging.warning("received signal %d: will checkpoint and stop at the next agreed step",
                    signum)
    self.received = signum

  def agreed(self, step: int, boundary: bool) -> int | None:
    """The signal to stop for after `step`, the same on every process, or
    None; `boundary`: a save or epoch end, where every process checks."""
    if jax.process_count() == 1:
      return self.received
    if not boundary and step % self.check_every:
      return None
    return _agree(self.received)

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _Checkpoints:
  """The run's `latest` and `best` managers and what goes into their metadata."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, steps_per_epoch: int):
    self.workdir = workdir
    self._open()
    self.steps_per_epoch = steps_per_epoch
    self.config_json = json.loads(config.to_json_best_effort())
    self.best_val = math.inf

  def _open(self) -> None:
    for manager in getattr(self, "managers", {}).values():
      manager.close()  # before reopening: stale step lists after a checkpoint was moved
    self.managers = checkpointing.make_managers(self.workdir)
    self.latest = self.managers[checkpointing.LATEST]
    self.best = self.managers[checkpointing.BEST]

  def meta(self, step: int, val_loss: float | None = None) -> dict[str, Any]:
    """A save's metadata; an epoch end's adds `dev_statistics`."""
    return {"step": step, "epoch": step // self.steps_per_epoch,
            "step_in_epoch": step % self.steps_per_epoch, "steps_per_epoch": self.steps_per_epoch,
            "val_loss": val_loss, "best_val_loss": self.best_val, "dev_threshold": None,
            "config": self.config_json}

  def resume(self, abstract_state: steps.TrainState) -> steps.TrainState:
    """The newest intact `latest` checkpoint restored. A checkpoint that cannot be read is moved aside (never deleted) with a
    warning, and the one before it is tried."""
    tried = sorted(self.latest.all_steps(), reverse=True)
    for step in tried:
      try:
        state, meta = checkpointing.restore(self.latest, step, abstract_state)
        break
      except checkpointing.CheckpointError as e:
        moved = checkpointing.move_aside(self.workdir, checkpointing.LATEST, step)
        logging.warning("%s; moved it to %s and trying the previous checkpoint", e, moved)
        self._open()
    else:
      raise checkpointing.CheckpointError(
          f"none of the latest checkpoints (steps {tried}) under {self.workdir} could be read; "
          "they were moved to checkpoints/broken/. Use a new --workdir or restore them.")
    if meta["steps_per_epoch"] != self.steps_per_epoch:
      raise ValueError(f"checkpoint at step {step} was made with {meta['steps_per_epoch']} "
                       f"steps/epoch, the data/batch size now give {self.steps_per_epoch}; use a "
                       "new --workdir")
    self.best_val = meta.get("best_val_loss", math.inf)
    logging.info("resumed from %s step %d (epoch %d)", checkpointing.LATEST, step,
                 step // self.steps_per_epoch)
    return state

  def check_finite(self, state: steps.TrainState) -> None:
    bad = int(jax.device_get(state.nonfinite_step))
    if bad >= 0:
      checkpointing.wait(self.latest)
      raise NonFiniteLossError(
          f"non-finite loss or gradient at step {bad}; training stopped and the update was "
          f"not applied. Last good checkpoints: "
          f"{checkpointing.checkpoint_dir(self.workdir, checkpointing.LATEST)} "
          f"(steps {self.latest.all_steps()}). Lower the learning rate or check the data.")

  def stop(self, signum: int, step: int) -> None:
    checkpointing.wait(self.latest)
    raise Interrupted(signum, step)

  def close(self) -> None:
    for m in self.managers.values():
      checkpointing.wait(m)


@dataclasses.dataclass(frozen=True)
class DevConfig:
  """What validating on the dev split reads of the config, made once in
  `train_and_evaluate` (after the attribution classes are fixed): how the
  split is read and batched, the attribution head's classes (empty: none)
  and the targets of the fits that travel with the model."""

  data: pipeline.InputConfig       # config.data: how the split's images are read
  batch_size: int                  # train.eval_batch_size
  classes: tuple[str, ...] = ()    # attribution.classes (empty: no attribution head)
  unsure_error: float = 0.05       # eval.unsure_error
  known_acceptance: float = 0.95   # attribution.known_acceptance

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "DevConfig":
    attribution = config.get("attribution", {})
    return cls(pipeline.InputConfig.from_config(config.data), int(config.train.eval_batch_size),
               attribution_classes.head_classes(config),
               float(config.eval.get("unsure_error", cls.unsure_error)),
               float(attribution.get("known_acceptance", cls.known_acceptance)))


def dev_statistics(split: Split, result: dict[str, Any], dev: DevConfig) -> dict[str, Any]:
  """Fixed on the dev set, travelling with the model: the EER threshold, the
  operating points at APCER/BPCER = 1 and 5 %, a Platt calibration of the
  joint head (order-preserving: rankings and AUC unchanged), the unsure
  band around the EER threshold (`verdicts.selective`: the images given a
  verdict have a dev error <= eval.unsure_error) and, with the attribution
  head, its open-set threshold (`attribution.openset`)."""
  labels, joint = split.labels, result["scores"]["joint"]
  threshold = metrics.eer(labels, joint)[1]
  out = {"dev_threshold": threshold,
         "unsure_band": selective.fit_band(labels, joint, threshold, dev.unsure_error),
         "operating_points": stats.dev_operating_points(labels, joint),
         "calibration": stats.fit_platt(labels, evaluate.logits_of(joint)),
         "dev_examples": int(len(labels))}
  if "source_logits" in result:
    classes = dev.classes
    out["attribution"] = {
        **openset.fit(result["source_logits"], attribution_classes.source_ids(split, classes),
                      classes, dev.known_acceptance),
        # The sources the head knows: closed-set accuracy is measured on these.
        "dev_sources": sorted(set(split.generators.tolist()))}
  return out


def validation_subset(split: Split, n: int, seed: int) -> Split:
  """`train.val_examples`: a fixed, seeded subset of `n` examples, stratified
  by class (each class keeps its share, at least one), the same every epoch so
  validation losses stay comparable; the whole split when n = 0 or n >= size."""
  if n <= 0 or n >= len(split):
    return split
  rng = np.random.default_rng([seed, 0x7A1])
  real = np.flatnonzero(split.labels == 1)
  attack = np.flatnonzero(split.labels != 1)
  take_real = int(np.clip(round(n * len(real) / len(split)), 1, min(len(real), n - 1)))
  keep = np.zeros(len(split), bool)
  keep[rng.choice(real, take_real, replace=False)] = True
  keep[rng.choice(attack, min(n - take_real, len(attack)), replace=False)] = True
  return split.select(keep)


def _evaluate(eval_fn, state: steps.TrainState, split: Split, dev: DevConfig,
              mesh) -> dict[str, Any]:
  return evaluate.evaluate_split(eval_fn, state, split, mesh, data=dev.data,
                                 batch_size=dev.batch_size, classes=dev.classes)


def _refit_on_full_dev(eval_fn, state, val_split: Split, dev: DevConfig, mesh,
                       ckpt: _Checkpoints) -> None:
  """After training on a validation subset: the dev statistics of `best` and
  of the newest `latest` refitted on the whole dev split."""
  ckpt.close()
  current = int(jax.device_get(state.step))
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)
  fitted: dict[int, dict[str, Any]] = {}  # best and latest are often the same step
  for manager in (ckpt.best, ckpt.latest):
    step = max(manager.all_steps(), default=None)
    if step is None or checkpointing.read_dev(manager, step):
      continue  # nothing saved, or refitted already (a rerun of a finished run)
    if step not in fitted:
      model = state if step == current else checkpointing.restore(manager, step, target)[0]
      fitted[step] = dev_statistics(val_split, _evaluate(eval_fn, model, val_split, dev, mesh),
                                    dev)
    checkpointing.write_dev(manager, step, fitted[step])
    logging.info("%s step %d: dev threshold, operating points and calibration refitted on "
                 "the whole dev split (%d examples)", os.path.basename(str(manager.directory)),
                 step, len(val_split))


def _validate(eval_fn, state: steps.TrainState, val_split: Split, dev: DevConfig, mesh,
              step: int, ckpt: _Checkpoints, writer, log_path: str | None) -> dict[str, Any]:
  """End of an epoch: validate, keep best and latest (with the dev threshold)."""
  val = _evaluate(eval_fn, state, val_split, dev, mesh)
  # Keep-best validates the detector: the attribution term does not move the
  # checkpoint that detection is evaluated at (with and without the head alike).
  val_loss = float(val.get("detection_loss", val["loss"]))
  if not math.isfinite(val_loss):
    raise NonFiniteLossError(f"non-finite validation loss at step {step}")
  # The same bits on every process (an all-reduced, replicated sum), so every
  # process takes the same keep-best decision and joins the same best save.
  improved = val_loss < ckpt.best_val
  ckpt.best_val = min(ckpt.best_val, val_loss)
  record = {"step": step, "epoch": step / ckpt.steps_per_epoch, "val_loss": val_loss,
            "val_examples": len(val_split),
            **{f"val_{k}": float(v) for k, v in val.items()
               if k.startswith("bce_") or k in ("cmfl", "attribution_ce")}}
  if "source_logits" in val:
    truth = attribution_classes.source_ids(val_split, dev.classes)
    record["val_attribution_accuracy"] = float(np.mean(val["source_logits"].argmax(-1) == truth))
  summaries.append_jsonl(log_path, record)
  if improved and summaries.is_main_process():
    score_files.write_scores(os.path.join(ckpt.workdir, "best_val_scores.csv"), val_split,
                             val["scores"]["joint"])
  summaries.write_scalars(writer, step, {f"val/{k}": v for k, v in val.items()
                                         if k not in ("scores", "count", "source_logits")})
  logging.info("epoch %.2f step %d: val_loss=%.5f%s", step / ckpt.steps_per_epoch, step, val_loss,
               " (best)" if improved else "")
  meta = {**ckpt.meta(step, val_loss), **dev_statistics(val_split, val, dev)}
  checkpointing.save(ckpt.latest, step, state, meta)
  # After a fallback to an earlier checkpoint the replayed step may already be
  # the best one on disk: exact resume makes it the same model, so it is kept.
  if improved and step not in ckpt.best.all_steps():
    checkpointing.save(ckpt.best, step, state, meta, metrics={"val_loss": val_loss})
  return record


def _is_debug_signal_step(train_config: ml_collections.ConfigDict, step: int) -> bool:
  """`train.debug_signal_at_step` reached on a process that signals itself
  (`train.debug_signal_process`, -1 = every process)."""
  return (step == train_config.debug_signal_at_step
          and train_config.debug_signal_process in (-1, jax.process_index()))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the latest checkpoint if any) and returns a summary."""
  tf.io.gfile.makedirs(workdir)
  mesh = steps.make_mesh()

  # ---------------------------------------------------------------- Data
  splits, skipped = sources.load_splits(config.data,
                                        [config.data.train_split, config.data.val_split])
  for line in split_summary(splits):
    logging.info("data %s", line)
  audit_result = audit.audit_data(config.data, workdir)  # warns before the first step
  pipeline.report_skipped(skipped, workdir, extra=audit.summary(audit_result))
  train_split, val_split = splits[config.data.train_split], splits[config.data.val_split]
  # The attribution classes, fixed here and saved in every checkpoint's config.
  config = attribution_classes.resolve(config, train_split)
  train_columns = None
  if attribution_classes.enabled(config):
    ids = attribution_classes.source_ids(train_split, config.attribution.classes)
    train_columns = {"source": ids}
    if config.attribution.get("class_balanced", True):
      order = pipeline.balanced_order(train_split.labels, config.seed, 0, config.data.balance,
                                      train_split.made_from)
      train_columns["source_weight"] = attribution_classes.balance_weights(
          ids, order, len(config.attribution.classes))
    logging.info("attribution head over %d sources: %s", len(config.attribution.classes),
                 list(config.attribution.classes))
  dev = DevConfig.from_config(config)
  val_subset = validation_subset(val_split, config.train.val_examples, config.seed)
  if val_subset is not val_split:
    logging.info("validating on %d of the %d dev examples (train.val_examples)",
                 len(val_subset), len(val_split))
  global_batch = config.train.batch_size
  if global_batch % jax.device_count():
    raise ValueError(f"batch_size {global_batch} must be divisible by the {jax.device_count()} "
                     "devices")
  inputs = pipeline.InputConfig.from_config(config.data)  # typed once, here
  steps_per_epoch = pipeline.steps_per_epoch(train_split, global_batch, inputs.balance,
                                             config.seed)
  total_steps = steps_per_epoch * config.train.num_epochs
  if config.train.max_steps > 0:
    total_steps = min(total_steps, config.train.max_steps)

  # ---------------------------------------------------------------- State
  ckpt = _Checkpoints(workdir, config, steps_per_epoch)
  resuming = bool(ckpt.latest.all_steps())
  # Resuming restores into the abstract state: no initialisation is computed.
  state, programs = steps.create_train_state(config, mesh, abstract=resuming)
  train_fn, eval_fn = steps.compile_steps(
      programs, losses.LossConfig.from_config(config.loss), mesh, state,
      backend.step_compiler_options(programs.model, mesh))
  if resuming:
    state = ckpt.resume(state)
  elif programs.model.pretrained:  # a fresh run: ImageNet / official weights from a file
    state = weights.init_from_file(state, programs.train_graphdef, programs.model.pretrained)
  step = int(jax.device_get(state.step))
  logging.info("model %s/%s: %d parameters; %d steps/epoch, %d total", programs.model.arch,
               config.loss.objective, models.count_params(state.params), steps_per_epoch,
               total_steps)

  # ---------------------------------------------------------------- Loop
  writer = summaries.summary_writer(workdir)
  log_path = summaries.jsonl_path(workdir)
  history = []
  is_time_to_log = lambda s: s % config.train.log_every_steps == 0 or s == total_steps  # noqa: E731
  first_step_start = time.perf_counter()
  with _StopSignals(config.train.stop_check_every_steps) as signals, summaries.progress(
      total_steps, step, "train", config.train.progress_bar) as bar:
    while step < total_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      ds = pipeline.train_dataset(train_split, inputs, global_batch, config.seed, epoch,
                                  skip_batches=offset,
                                  stop_batch=min(steps_per_epoch, offset + total_steps - step),
                                  columns=train_columns)
      window_start, window_metrics = time.perf_counter(), []
      for batch in pipeline.global_batches(ds, steps.batch_sharding(mesh)):
        state, step_metrics = train_fn(state, batch)
        step += 1
        if first_step_start is not None:  # the first step compiles it: say how long that took
          jax.block_until_ready(step_metrics)
          logging.info("first train step done in %.1f s (compilation included)",
                       time.perf_counter() - first_step_start)
          first_step_start = None
        window_metrics.append(step_metrics)
        bar.update(1)
        if _is_debug_signal_step(config.train, step):
          # Test hook: the real signal path (SIGTERM) or a hard kill (SIGKILL).
          jax.block_until_ready(state)
          os.kill(os.getpid(), config.train.debug_signal)

        if is_time_to_log(step):
          ckpt.check_finite(state)
          means = {f"train/{k}": float(np.mean([m[k] for m in jax.device_get(window_metrics)]))
                   for k in window_metrics[0]}
          elapsed = time.perf_counter() - window_start
          means["train/images_per_sec"] = len(window_metrics) * global_batch / max(elapsed, 1e-9)
          means["train/learning_rate"] = config.optim.learning_rate
          summaries.write_scalars(writer, step, means)
          bar.set_postfix(loss=f"{means['train/loss']:.4f}",
                          img_s=f"{means['train/images_per_sec']:.1f}")
          logging.info("step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in means.items()))
          summaries.append_jsonl(log_path, {"step": step, **means})
          window_start, window_metrics = time.perf_counter(), []

        if step % steps_per_epoch == 0 or step == total_steps:
          ckpt.check_finite(state)
          continue  # the dataset ends here; validated, saved and the stop agreed below
        is_periodic_save = step % config.train.checkpoint_every_steps == 0
        stop = signals.agreed(step, boundary=is_periodic_save)
        if is_periodic_save or stop:
          ckpt.check_finite(state)
          checkpointing.save(ckpt.latest, step, state, ckpt.meta(step))
        if stop:
          ckpt.stop(stop, step)

      history.append(_validate(eval_fn, state, val_subset, dev, mesh, step, ckpt, writer,
                               log_path))
      stop = signals.agreed(step, boundary=True)
      if stop:
        ckpt.stop(stop, step)
  if val_subset is not val_split:
    _refit_on_full_dev(eval_fn, state, val_split, dev, mesh, ckpt)
  ckpt.close()
  if writer is not None:
    writer.close()
  return {"steps": step, "best_val_loss": ckpt.best_val, "history": history}
