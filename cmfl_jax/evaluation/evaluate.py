"""Evaluation: scores over whole splits (`evaluate_split`, also used for
validation during training), and of a saved model: reload an Orbax checkpoint
in a fresh process, score every evaluation split, write the official score
files, metrics and report."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from cmfl_jax import backend, models
from cmfl_jax.attribution import classes as attribution_classes
from cmfl_jax.attribution import evaluation as attribution_evaluation
from cmfl_jax.data import ops, pipeline, sources
from cmfl_jax.data.auditing import configured as audit
from cmfl_jax.data.split import Split
from cmfl_jax.evaluation import metrics, report, score_files, stats
from cmfl_jax.explanations import frequencies
from cmfl_jax.training import checkpointing, losses, steps, summaries
from cmfl_jax.verdicts import selective


def evaluate_split(eval_fn: Callable, state: steps.TrainState, split: Split, mesh: Mesh, *,
                   data: pipeline.InputConfig, batch_size: int, condition: str = "none",
                   classes: Sequence[str] = ()) -> dict[str, Any]:
  """Mean loss terms and per-example scores (in split order) over one split
  read as `data` says (`pipeline.InputConfig`; a `config.data` ConfigDict is
  accepted), in global batches of `batch_size`,
  optionally post-processed by a robustness `condition`; with the attribution
  head (`classes`, `attribution.classes.head_classes`) also its logits [N, K]
  (`source_logits`)."""
  columns = {"source": attribution_classes.source_ids(split, classes)} if classes else None
  ds = pipeline.eval_dataset(split, data, batch_size, condition, columns)
  totals: dict[str, float] = {}
  outputs: dict[str, list] = {}
  indices, masks = [], []
  for batch in pipeline.global_batches(ds, steps.batch_sharding(mesh)):
    sums, probs = eval_fn(state, batch)
    for k, v in jax.device_get(sums).items():
      totals[k] = totals.get(k, 0.0) + float(v)
    gathered = multihost_utils.process_allgather(
        {"probs": probs, "index": batch["index"], "mask": batch["mask"]}, tiled=True)
    for head, p in gathered["probs"].items():
      outputs.setdefault(head, []).append(p)
    indices.append(gathered["index"])
    masks.append(gathered["mask"])
  count = totals.pop("count")
  keep = np.concatenate(masks)
  order = np.concatenate(indices)[keep]
  out = {k: v / count for k, v in totals.items()}
  out["count"] = int(count)
  out["scores"] = {}
  for head, chunks in outputs.items():
    values = np.concatenate(chunks)[keep]
    in_order = np.empty((len(split),) + values.shape[1:], np.float32)
    in_order[order] = values
    if head == models.SOURCE:
      out["source_logits"] = in_order
    else:
      out["scores"][head] = in_order
  return out


def split_metrics(labels: np.ndarray, scores: np.ndarray,
                  dev_threshold: float | None = None) -> dict[str, float]:
  """`metrics.summary` (D-EER, AUC, AP, operating points, rates at the dev
  threshold) plus accuracy at 0.5."""
  out = metrics.summary(labels, scores, dev_threshold)
  out["accuracy"] = float(np.mean((scores >= 0.5) == (labels == 1)))
  return out


def split_intervals(labels: np.ndarray, scores: np.ndarray, dev_threshold: float | None,
                    resamples: int, confidence: float, seed: int) -> dict[str, dict[str, float]]:
  """Stratified-bootstrap intervals of every `split_metrics` number (but accuracy)."""
  thresholds = {"0.5": 0.5, **({"dev": dev_threshold} if dev_threshold is not None else {})}
  return stats.bootstrap_summary(labels, scores, thresholds, resamples, confidence, seed)


def logits_of(probs: np.ndarray) -> np.ndarray:
  """The logit of P(real) (float64; P clipped to float32's resolution)."""
  p = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
  return np.log(p) - np.log1p(-p)


def calibration_entry(labels: np.ndarray, probs: np.ndarray, calibration: dict | None,
                      n_bins: int) -> dict[str, Any]:
  """ECE and reliability curves before and, with a stored calibration, after."""
  out = {"n_bins": n_bins, "ece": stats.expected_calibration_error(labels, probs, n_bins),
         "reliability": _listed(stats.reliability_curve(labels, probs, n_bins))}
  if calibration:
    calibrated = stats.apply_calibration(calibration, logits_of(probs))
    out.update(ece_calibrated=stats.expected_calibration_error(labels, calibrated, n_bins),
               reliability_calibrated=_listed(stats.reliability_curve(labels, calibrated,
                                                                      n_bins)),
               auc_calibrated=metrics.roc_auc(labels, calibrated))
  return out


def _listed(curve: dict[str, np.ndarray]) -> dict[str, list]:
  return {k: np.asarray(v).tolist() for k, v in curve.items()}


def restore_for_eval(config: ml_collections.ConfigDict, workdir: str, which: str | int
                     ) -> tuple[Any, Any, Any, dict, str]:
  """(state, eval_fn, mesh, meta, name) for checkpoint `which` of `workdir`."""
  mesh = steps.make_mesh()
  kind, step = checkpointing.select_step(workdir, which)
  manager = checkpointing.make_managers(workdir)[kind]
  config = attribution_classes.from_checkpoint(config, checkpointing.read_meta(manager, step))
  abstract, programs = steps.create_train_state(config, mesh, abstract=True)
  try:
    state, meta = checkpointing.restore(manager, step, abstract)
  except checkpointing.CheckpointError as e:
    raise checkpointing.CheckpointError(
        f"{e}. The workdir holds {checkpointing.describe(checkpointing.available(workdir))}; "
        "choose another with --checkpoint=best|latest|STEP") from None
  _, eval_fn = steps.compile_steps(
      programs, losses.LossConfig.from_config(config.loss), mesh, state,
      backend.step_compiler_options(programs.model, mesh))
  logging.info("restored %s checkpoint at step %d (val_loss=%s)", kind, step, meta.get("val_loss"))
  return state, eval_fn, mesh, meta, f"{kind}_{step}"


def condition_tag(condition: str) -> str:
  """File-name form of a condition: "jpeg:70" -> "jpeg70"."""
  return condition.replace(":", "")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """`config.eval` (with the seed of its resampling) as typed values, made
  once at the boundary (`from_config`): what scoring a saved model needs
  beyond the model and the data."""

  checkpoint: str | int = "best"
  conditions: tuple[str, ...] = ()
  robustness_splits: tuple[str, ...] = ()  # resolved: the splits scored under `conditions`
  bootstrap_resamples: int = 1000
  confidence: float = 0.95
  calibration_bins: int = 15
  explain_frequencies: bool = False
  seed: int = 0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "EvalConfig":
    """Validates `config.eval` against `config.data.eval_splits`; raises
    ValueError before any work."""
    ev, eval_splits = config.eval, tuple(config.data.eval_splits)
    conditions = tuple(ev.conditions)
    for condition in conditions:
      ops.parse_condition(condition)
    names = tuple(ev.robustness_splits) or eval_splits
    unknown = sorted(set(names) - set(eval_splits))
    if unknown:
      raise ValueError(f"eval.robustness_splits {unknown} are not in data.eval_splits")
    return cls(ev.checkpoint, conditions, names if conditions else (),
               int(ev.bootstrap_resamples), float(ev.confidence), int(ev.calibration_bins),
               bool(ev.get("explain_frequencies", False)), int(config.seed))


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        which: str | int | None = None) -> dict[str, Any]:
  """Scores every `config.data.eval_splits` split with a saved model, and the
  robustness splits under every `config.eval.conditions` post-processing.

  Writes to `<workdir>/eval/<kind>_<step>/` (process 0 only): official score
  files per split and head (`<split>_scores[_<head>].csv`, and
  `<split>@<condition>_scores.csv`), `metrics.json`, `report.md` with its
  plots; the same scalars go to TensorBoard under `eval/`. Returns the metrics.
  """
  ev = EvalConfig.from_config(config)  # fails before any work
  which = ev.checkpoint if which is None else which
  state, eval_fn, mesh, meta, name = restore_for_eval(config, workdir, which)
  config = attribution_classes.from_checkpoint(config, meta)
  classes = attribution_classes.head_classes(config)
  splits, skipped = sources.load_splits(config.data, config.data.eval_splits)
  inputs = pipeline.InputConfig.from_config(config.data)  # typed once, here
  audit_result = audit.audit_data(config.data, workdir)
  pipeline.report_skipped(skipped, workdir, "eval_data_report.json", audit.summary(audit_result))
  out_dir = os.path.join(workdir, "eval", name)
  results: dict[str, Any] = {"checkpoint": name, "step": meta["step"],
                             "val_loss": meta.get("val_loss"),
                             "dev_threshold": meta.get("dev_threshold"),
                             "operating_points": meta.get("operating_points"),
                             "calibration": meta.get("calibration"),
                             "model": {k: config.model[k] for k in ("arch", "input", "backbone")},
                             "objective": config.loss.objective,
                             "train_split": config.data.train_split,
                             "splits": {}, "robustness": {}}
  main = summaries.is_main_process()
  if main:
    tf.io.gfile.makedirs(out_dir)
  joint_scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  source_logits: dict[str, tuple[Split, np.ndarray]] = {}

  def run(split_name: str, condition: str) -> dict[str, Any]:
    split = splits[split_name]
    res = evaluate_split(eval_fn, state, split, mesh, data=inputs,
                         batch_size=config.train.eval_batch_size, condition=condition,
                         classes=classes)
    entry = {k: v for k, v in res.items() if k not in ("scores", "source_logits")}
    for head, scores in res["scores"].items():
      entry[f"metrics_{head}"] = split_metrics(split.labels, scores, meta.get("dev_threshold"))
      entry[f"intervals_{head}"] = split_intervals(split.labels, scores, meta.get("dev_threshold"),
                                                   ev.bootstrap_resamples, ev.confidence, ev.seed)
      if main and (condition == "none" or head == "joint"):
        suffix = "" if head == "joint" else f"_{head}"
        where = split_name if condition == "none" else f"{split_name}@{condition_tag(condition)}"
        score_files.write_scores(os.path.join(out_dir, f"{where}_scores{suffix}.csv"),
                                 split, scores)
    if condition == "none":
      joint = res["scores"]["joint"]
      joint_scores[split_name] = (split.labels, joint)
      if "source_logits" in res:
        source_logits[split_name] = (split, res["source_logits"])
      if meta.get("operating_points"):  # fixed on the dev set, applied unchanged
        entry["operating_points"] = stats.evaluate_operating_points(
            split.labels, joint, meta["operating_points"], ev.bootstrap_resamples,
            ev.confidence, ev.seed)
      entry["calibration"] = calibration_entry(split.labels, joint, meta.get("calibration"),
                                               ev.calibration_bins)
      entry["verdicts"] = selective.report_entry(split.labels, joint, meta.get("dev_threshold"),
                                                 meta.get("unsure_band"))
    logging.info("eval %s on %s [%s]: loss=%.5f D-EER=%.4f", name, split_name, condition,
                 entry["loss"], entry["metrics_joint"]["d_eer"])
    return entry

  for split_name in config.data.eval_splits:
    results["splits"][split_name] = run(split_name, "none")
  for split_name in ev.robustness_splits:
    results["robustness"][split_name] = {"none": results["splits"][split_name]}
    for condition in ev.conditions:
      results["robustness"][split_name][condition] = run(split_name, condition)
  if source_logits and meta.get("attribution"):
    results["attribution"] = attribution_evaluation.evaluate(
        attribution_evaluation.collect(source_logits, classes),
        meta["attribution"], ev.bootstrap_resamples, ev.confidence, ev.seed)
  if main and ev.explain_frequencies:
    results["frequencies"] = frequencies.frequency_summary(config, state, splits, out_dir)
  if main:
    with tf.io.gfile.GFile(os.path.join(out_dir, "metrics.json"), "w") as f:
      json.dump(results, f, indent=2)
    report.write_eval_report(results, joint_scores, out_dir)
    writer = summaries.summary_writer(workdir)
    summaries.write_scalars(writer, int(meta["step"]), report.eval_scalars(results))
    writer.close()
  results["out_dir"] = out_dir
  return results
