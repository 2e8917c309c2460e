"""Evaluation of a saved model: reload an Orbax checkpoint in a fresh process,
score every evaluation split, write the official score files and metrics."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cmfl_jax import checkpointing, input_pipeline, metrics, score_files, train


def split_metrics(labels: np.ndarray, scores: np.ndarray,
                  dev_threshold: float | None = None) -> dict[str, float]:
  """`metrics.summary` (D-EER, AUC, AP, operating points, rates at the dev
  threshold) plus accuracy at 0.5."""
  out = metrics.summary(labels, scores, dev_threshold)
  out["accuracy"] = float(np.mean((scores >= 0.5) == (labels == 1)))
  return out


def restore_for_eval(config: ml_collections.ConfigDict, workdir: str, which: str | int
                     ) -> tuple[Any, Any, Any, dict, str]:
  """(state, eval_fn, mesh, meta, name) for checkpoint `which` of `workdir`."""
  mesh = train.make_mesh()
  abstract, programs = train.create_train_state(config, mesh, abstract=True)
  kind, step = checkpointing.select_step(workdir, which)
  manager = checkpointing.make_managers(workdir)[kind]
  state, meta = checkpointing.restore(manager, step, abstract)
  _, eval_fn = train.compile_steps(programs, config, mesh, state)
  logging.info("restored %s checkpoint at step %d (val_loss=%s)", kind, step, meta.get("val_loss"))
  return state, eval_fn, mesh, meta, f"{kind}_{step}"


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        which: str | int | None = None) -> dict[str, Any]:
  """Scores every `config.data.eval_splits` split with a saved model.

  Writes `<workdir>/eval/<kind>_<step>/{<split>_scores.csv, metrics.json}`
  (process 0 only) and returns the metrics.
  """
  which = config.eval.checkpoint if which is None else which
  state, eval_fn, mesh, meta, name = restore_for_eval(config, workdir, which)
  splits, skipped = input_pipeline.load_splits(config.data, config.data.eval_splits)
  input_pipeline.report_skipped(skipped, workdir, "eval_data_report.json")
  out_dir = os.path.join(workdir, "eval", name)
  results: dict[str, Any] = {"checkpoint": name, "step": meta["step"],
                             "val_loss": meta.get("val_loss"), "splits": {}}
  main = jax.process_index() == 0
  if main:
    tf.io.gfile.makedirs(out_dir)
  for split_name in config.data.eval_splits:
    split = splits[split_name]
    res = train.evaluate_split(eval_fn, state, split, config, mesh)
    entry = {k: v for k, v in res.items() if k != "scores"}
    for head, scores in res["scores"].items():
      entry[f"metrics_{head}"] = split_metrics(split.labels, scores, meta.get("dev_threshold"))
      if main:
        suffix = "" if head == "joint" else f"_{head}"
        score_files.write_scores(os.path.join(out_dir, f"{split_name}_scores{suffix}.csv"),
                                 split, scores)
    results["splits"][split_name] = entry
    logging.info("eval %s on %s: loss=%.5f accuracy=%.4f", name, split_name, entry["loss"],
                 entry["metrics_joint"]["accuracy"])
  if main:
    with tf.io.gfile.GFile(os.path.join(out_dir, "metrics.json"), "w") as f:
      json.dump(results, f, indent=2)
  results["out_dir"] = out_dir
  return results


def format_summary(results: dict[str, Any]) -> str:
  """The cross-model table (joint head): one row per evaluation split."""
  lines = [f"checkpoint {results['checkpoint']} (val_loss={results['val_loss']:.5f})",
           f"{'eval split':<30}{'n':>6}{'D-EER':>8}{'AUC':>8}{'APCER':>8}{'BPCER':>8}{'loss':>9}"]
  for name, r in results["splits"].items():
    m = r["metrics_joint"]
    lines.append(f"{name:<30}{r['count']:>6}{100 * m['d_eer']:>7.1f}%{m['auc']:>8.3f}"
                 f"{m['apcer@0.5']:>8.3f}{m['bpcer@0.5']:>8.3f}{r['loss']:>9.4f}")
  return "\n".join(lines)
