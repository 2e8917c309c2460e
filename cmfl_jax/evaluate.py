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

from cmfl_jax import checkpointing, input_pipeline, score_files, train


def basic_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
  """Accuracy at 0.5 and the per-class error rates (ISO/IEC 30107-3 names)."""
  pred_real = scores >= 0.5
  real, attack = labels == 1, labels == 0
  return {
      "accuracy": float(np.mean(pred_real == real)),
      "apcer@0.5": float(np.mean(pred_real[attack])) if attack.any() else float("nan"),
      "bpcer@0.5": float(np.mean(~pred_real[real])) if real.any() else float("nan"),
  }


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
  splits, skipped = input_pipeline.load_splits(config.data)
  input_pipeline.report_skipped(skipped, workdir)
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
      entry[f"metrics_{head}"] = basic_metrics(split.labels, scores)
      if main:
        suffix = "" if head == "joint" else f"_{head}"
        score_files.write_scores(os.path.join(out_dir, f"{split_name}_scores{suffix}.csv"), split, scores)
    results["splits"][split_name] = entry
    logging.info("eval %s on %s: loss=%.5f accuracy=%.4f", name, split_name, entry["loss"],
                 entry["metrics_joint"]["accuracy"])
  if main:
    with tf.io.gfile.GFile(os.path.join(out_dir, "metrics.json"), "w") as f:
      json.dump(results, f, indent=2)
  results["out_dir"] = out_dir
  return results


def format_summary(results: dict[str, Any]) -> str:
  """A small plain-text table of the evaluation results."""
  lines = [f"checkpoint {results['checkpoint']} (val_loss={results['val_loss']})",
           f"{'split':<24}{'n':>7}{'loss':>10}{'acc':>8}{'APCER':>8}{'BPCER':>8}"]
  for name, r in results["splits"].items():
    m = r["metrics_joint"]
    lines.append(f"{name:<24}{r['count']:>7}{r['loss']:>10.4f}{m['accuracy']:>8.3f}"
                 f"{m['apcer@0.5']:>8.3f}{m['bpcer@0.5']:>8.3f}")
  return "\n".join(lines)
