"""Sweeps over (known generator family x model variant), as in the paper's
comparison table: every run trains on one known family, is evaluated on all
families, and the sweep writes one combined report with the cross-model
matrix and its heatmaps.

A config with a `sweep` field is a sweep (see configs/paper_table.py):
  sweep.known      families to train on, substituted for "{known}";
  sweep.variants   names from VARIANTS;
  sweep.templates  (dotted config key, value with "{known}") pairs, e.g.
                   ("data.train_split", "real_train+{known}_train").
Runs live in `<workdir>/<known>/<variant>/` and resume like any training run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cmfl_jax import evaluate, report, train

# The paper's four models: (arch, one_stream input, objective).
VARIANTS = {
    "rgb/bce": ("one_stream", "rgb", "bce"),
    "fft/bce": ("one_stream", "freq", "bce"),
    "two_stream/bce": ("two_stream", "rgb", "bce"),
    "two_stream/cmfl": ("two_stream", "rgb", "cmfl"),
}


def _fill(value: Any, known: str) -> Any:
  if isinstance(value, str):
    return value.format(known=known)
  if isinstance(value, (tuple, list)):
    return tuple(_fill(v, known) for v in value)
  return value


def run_config(config: ml_collections.ConfigDict, known: str,
               variant: str) -> ml_collections.ConfigDict:
  """The plain training config of one sweep cell."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown sweep variant {variant!r}; choose from {sorted(VARIANTS)}")
  run = ml_collections.ConfigDict(config.to_dict())
  del run["sweep"]
  for key, template in config.sweep.templates:
    section, field = key.split(".")
    run[section][field] = _fill(template, known)
  run.model.arch, run.model.input, run.loss.objective = VARIANTS[variant]
  return run


def run_dir(workdir: str, known: str, variant: str) -> str:
  return os.path.join(workdir, known, variant.replace("/", "_"))


def _column_label(template: str) -> str:
  return template.replace("real_eval+", "").replace("_eval", "").replace("{known}", "known")


def run_sweep(config: ml_collections.ConfigDict, workdir: str, mode: str) -> dict[str, Any]:
  """Trains and/or evaluates every cell, then writes `<workdir>/report.md`,
  `heatmap.png` and `sweep.json`. Returns {"<variant>|<known>": results}."""
  cells = [(k, v) for v in config.sweep.variants for k in config.sweep.known]
  for known, variant in cells:
    run_config(config, known, variant)  # validate every cell before any work
  results = {}
  for i, (known, variant) in enumerate(cells):
    cfg, directory = run_config(config, known, variant), run_dir(workdir, known, variant)
    logging.info("sweep cell %d/%d: %s trained on %s -> %s", i + 1, len(cells), variant, known,
                 directory)
    if mode in ("train", "train_and_eval"):
      train.train_and_evaluate(cfg, directory)
    if mode in ("eval", "train_and_eval"):
      results[f"{variant}|{known}"] = evaluate.evaluate_checkpoint(cfg, directory)
  if results:
    write_sweep_report(config, results, workdir)
  return results


def write_sweep_report(config: ml_collections.ConfigDict, results: dict[str, Any],
                       workdir: str) -> str:
  """The combined report: D-EER and AUC matrices (rows: variant / known family,
  columns: evaluation sets), heatmaps, robustness on the known family."""
  eval_templates = dict(config.sweep.templates).get("data.eval_splits",
                                                    tuple(config.data.eval_splits))
  columns = [_column_label(t) for t in eval_templates]
  known = list(config.sweep.known)
  lines = ["# Cross-model comparison", "",
           f"Variants trained on each known family ({', '.join(known)}) and evaluated on "
           "every evaluation set (joint head; rates in %). Per-run reports: "
           "`<known>/<variant>/eval/<checkpoint>/report.md`.", ""]
  matrices = {}
  for metric, title in (("d_eer", "D-EER %"), ("auc", "AUC")):
    rows = []
    for variant in config.sweep.variants:
      m = np.full((len(known), len(columns)), np.nan)
      for r, k in enumerate(known):
        res = results.get(f"{variant}|{k}")
        if res is None:
          continue
        for c, template in enumerate(eval_templates):
          entry = res["splits"].get(_fill(template, k))
          if entry is not None:
            m[r, c] = entry["metrics_joint"][metric] * (100 if metric == "d_eer" else 1)
        rows.append([variant, k] + [("-" if np.isnan(v) else
                                     (f"{v:.1f}" if metric == "d_eer" else f"{v:.3f}"))
                                    for v in m[r]])
      if metric == "d_eer":
        matrices[variant] = m
    lines += [f"## {title}", "", *report.markdown_table(["model", "known"] + columns, rows), ""]
  robust_rows, conditions = [], []
  for variant in config.sweep.variants:
    for k in known:
      res = results.get(f"{variant}|{k}")
      for split, by_condition in (res or {}).get("robustness", {}).items():
        conditions = list(by_condition)
        robust_rows.append([variant, k, split] + [
            f"{100 * by_condition[c]['metrics_joint']['d_eer']:.1f}" for c in conditions])
  if robust_rows:
    lines += ["## Robustness (D-EER %, joint head)", "",
              *report.markdown_table(["model", "known", "eval split"] + conditions, robust_rows), ""]
  report.plot_heatmaps(matrices, known, columns, os.path.join(workdir, "heatmap.png"))
  lines += ["## Heatmap", "", "![Cross-model D-EER](heatmap.png)", ""]
  path = os.path.join(workdir, "report.md")
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("\n".join(lines))
  with tf.io.gfile.GFile(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump(results, f, indent=2, default=str)
  return path
