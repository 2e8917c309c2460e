"""Evaluation reports: Markdown tables, PNG plots and TensorBoard scalars.

Inputs are the dictionaries `evaluate.evaluate_checkpoint` returns (and writes
as metrics.json), so a report can be rebuilt from files alone. Plots use
matplotlib's non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from cmfl_jax import metrics

HEADS = ("joint", "rgb", "freq")
# Columns of the per-split table: (metric key, header); rates shown in percent.
_COLUMNS = (("d_eer", "D-EER %"), ("auc", "AUC"), ("average_precision", "AP"),
            ("bpcer@apcer=0.01", "BPCER@APCER=1%"), ("bpcer@apcer=0.05", "BPCER@APCER=5%"),
            ("bpcer@apcer=0.1", "BPCER@APCER=10%"), ("apcer@bpcer=0.01", "APCER@BPCER=1%"),
            ("apcer@bpcer=0.05", "APCER@BPCER=5%"), ("apcer@bpcer=0.1", "APCER@BPCER=10%"),
            ("apcer@dev", "APCER@dev %"), ("bpcer@dev", "BPCER@dev %"))
_FRACTIONS = ("auc", "average_precision")
_DET_TICKS = (0.001, 0.01, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95)


def _fmt(key: str, value: float | None) -> str:
  if value is None:
    return "-"
  return f"{value:.3f}" if key in _FRACTIONS else f"{100 * value:.1f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(r) + " |" for r in rows])


def split_table(results: Mapping[str, Any], head: str = "joint") -> list[str]:
  """One row per evaluation split: every headline metric of one head."""
  rows = []
  for name, entry in results["splits"].items():
    m = entry.get(f"metrics_{head}")
    if m is not None:
      rows.append([name, str(entry["count"])] + [_fmt(k, m.get(k)) for k, _ in _COLUMNS])
  return markdown_table(["eval split", "n"] + [h for _, h in _COLUMNS], rows)


def heads_table(results: Mapping[str, Any]) -> list[str]:
  """D-EER % of every head on every split (two_stream models have three)."""
  heads = [h for h in HEADS if any(f"metrics_{h}" in e for e in results["splits"].values())]
  rows = [[name] + [_fmt("d_eer", e[f"metrics_{h}"]["d_eer"]) for h in heads]
          for name, e in results["splits"].items()]
  return markdown_table(["eval split"] + [f"D-EER % ({h})" for h in heads], rows)


def robustness_table(results: Mapping[str, Any]) -> list[str]:
  """Rows = post-processing condition; per split D-EER % and APCER/BPCER at
  the dev threshold (joint head)."""
  robust = results.get("robustness") or {}
  if not robust:
    return []
  names = list(robust)
  conditions = list(next(iter(robust.values())))
  header = ["condition"]
  for n in names:
    header += [f"{n} D-EER %", "APCER@dev %", "BPCER@dev %"]
  rows = []
  for c in conditions:
    row = [c]
    for n in names:
      m = robust[n][c]["metrics_joint"]
      row += [_fmt("d_eer", m["d_eer"]), _fmt("x", m.get("apcer@dev")),
              _fmt("x", m.get("bpcer@dev"))]
    rows.append(row)
  return markdown_table(header, rows)


def eval_scalars(results: Mapping[str, Any]) -> dict[str, float]:
  """TensorBoard scalars: eval/<split>/<head>/<metric> and
  robustness/<split>/<condition>/<metric> (joint head)."""
  out = {}
  for name, entry in results["splits"].items():
    out[f"eval/{name}/loss"] = entry["loss"]
    for head in HEADS:
      for k, v in entry.get(f"metrics_{head}", {}).items():
        out[f"eval/{name}/{head}/{k}"] = v
  for name, by_condition in (results.get("robustness") or {}).items():
    for condition, entry in by_condition.items():
      for k in ("d_eer", "auc", "apcer@dev", "bpcer@dev"):
        if k in entry["metrics_joint"]:
          out[f"robustness/{name}/{condition}/{k}"] = entry["metrics_joint"][k]
  return out


# ----------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------
def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _probit(p: np.ndarray) -> np.ndarray:
  inv = statistics.NormalDist().inv_cdf
  return np.array([inv(x) for x in np.clip(p, 1e-4, 1 - 1e-4)])


def _save(fig, path: str) -> None:
  with tf.io.gfile.GFile(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
  _pyplot().close(fig)


def plot_det(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str,
             title: str = "DET") -> None:
  """DET curves (APCER vs BPCER on normal-deviate axes), one per split."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 6))
  for name, (labels, scores) in curves.items():
    _, apcer, bpcer = metrics.error_rates(labels, scores)
    d_eer = metrics.eer(labels, scores)[0]
    ax.plot(_probit(apcer), _probit(bpcer), label=f"{name} (D-EER {100 * d_eer:.1f}%)")
  ticks = _probit(np.asarray(_DET_TICKS))
  labels_pct = [f"{100 * t:g}" for t in _DET_TICKS]
  ax.set_xticks(ticks, labels_pct)
  ax.set_yticks(ticks, labels_pct)
  lim = (_probit(np.asarray([5e-4]))[0], _probit(np.asarray([0.95]))[0])
  ax.set_xlim(*lim)
  ax.set_ylim(*lim)
  ax.plot(lim, lim, color="grey", linestyle=":", linewidth=0.8)
  ax.set_xlabel("APCER (%)")
  ax.set_ylabel("BPCER (%)")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, loc="upper right")
  _save(fig, path)


def plot_histograms(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str) -> None:
  """Score histograms, bona fide vs synthetic, one panel per split."""
  plt = _pyplot()
  n = len(curves)
  cols = min(n, 4)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
  bins = np.linspace(0, 1, 41)
  for ax, (name, (labels, scores)) in zip(axes.ravel(), curves.items()):
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="bona fide", color="tab:green")
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="synthetic", color="tab:red")
    ax.set_title(name, fontsize=8)
    ax.set_xlabel("score = P(real)", fontsize=7)
    ax.tick_params(labelsize=7)
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  axes.ravel()[0].legend(fontsize=7)
  fig.tight_layout()
  _save(fig, path)


def plot_heatmaps(matrices: Mapping[str, np.ndarray], row_labels: Sequence[str],
                  col_labels: Sequence[str], path: str, what: str = "D-EER %") -> None:
  """One annotated heatmap per model variant (rows: known family, cols: eval)."""
  plt = _pyplot()
  n = len(matrices)
  fig, axes = plt.subplots(1, n, figsize=(1.0 + 0.9 * len(col_labels) * n,
                                          1.2 + 0.5 * len(row_labels)), squeeze=False)
  for ax, (name, m) in zip(axes[0], matrices.items()):
    ax.imshow(m, cmap="viridis_r", vmin=0, vmax=50)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    for (i, j), v in np.ndenumerate(m):
      ax.text(j, i, "-" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=6,
              color="white" if v > 25 else "black")
    ax.set_title(f"{name}: {what}", fontsize=8)
  fig.tight_layout()
  _save(fig, path)


# ----------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------
def summary_lines(results: Mapping[str, Any]) -> list[str]:
  """The Markdown body: model, cross-model table, per-head and robustness tables."""
  dev = results.get("dev_threshold")
  model = results.get("model", {})
  val_loss = results["val_loss"]  # None for checkpoints converted from PyTorch
  lines = [f"Checkpoint `{results['checkpoint']}` (step {results['step']}, validation loss "
           f"{'n/a' if val_loss is None else f'{val_loss:.5f}'}); model {model.get('arch', '?')}"
           f"{'/' + model['input'] if model.get('arch') == 'one_stream' else ''}, objective "
           f"{results.get('objective', '?')}, trained on `{results.get('train_split', '?')}`.",
           f"Dev-EER threshold: {'not stored (0.5 used)' if dev is None else f'{dev:.4f}'}. "
           "Rates in %; label 1 = bona fide; score = P(real).", "",
           "## Cross-model evaluation (joint head)", "", *split_table(results)]
  if any("metrics_rgb" in e for e in results["splits"].values()):
    lines += ["", "## Per head", "", *heads_table(results)]
  robust = robustness_table(results)
  if robust:
    lines += ["", "## Robustness to post-processing (joint head)", "", *robust]
  return lines


def write_eval_report(results: Mapping[str, Any],
                      curves: Mapping[str, tuple[np.ndarray, np.ndarray]], out_dir: str) -> str:
  """report.md, det.png and hist.png in `out_dir`; returns the report path."""
  plot_det(curves, os.path.join(out_dir, "det.png"), f"DET, {results['checkpoint']}")
  plot_histograms(curves, os.path.join(out_dir, "hist.png"))
  lines = [f"# Evaluation report: {results['checkpoint']}", "", *summary_lines(results), "",
           "## Plots", "", "![DET curves per evaluation split](det.png)", "",
           "![Score histograms](hist.png)", ""]
  path = os.path.join(out_dir, "report.md")
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("\n".join(lines))
  return path


# ----------------------------------------------------------------------------
# Sweep report
# ----------------------------------------------------------------------------
def _short_split(split: str) -> str:
  return split.replace("real_eval+", "").replace("_eval", "")


def sweep_columns(cells: Sequence[tuple[str, Any]]) -> list[str]:
  """Column labels of the cross-model matrix, by position in each cell's
  `data.eval_splits`; a column whose split depends on the cell's known data
  (e.g. the unseen camera against the known family) says "known"."""
  splits = [tuple(cfg.data.eval_splits) for _, cfg in cells]
  labels = []
  for c, split in enumerate(splits[0]):
    if all(len(s) > c and s[c] == split for s in splits):
      labels.append(_short_split(split))
    else:
      known = cells[0][0].partition("@")[2]
      labels.append(_short_split(split).replace(known, "known"))
  return labels


def write_sweep_report(cells: Sequence[tuple[str, Any]], results: Mapping[str, Any],
                       workdir: str) -> str:
  """The combined report of a sweep: D-EER and AUC matrices (rows: model /
  known data, columns: evaluation sets), heatmaps, robustness on the known
  family; `report.md`, `heatmap.png` and `sweep.json` in `workdir`."""
  columns = sweep_columns(cells)
  models = list(dict.fromkeys(name.partition("@")[0] for name, _ in cells))
  known = list(dict.fromkeys(name.partition("@")[2] for name, _ in cells))
  configs = dict(cells)
  lines = ["# Cross-model comparison", "",
           f"Models trained on each known family ({', '.join(known)}) and evaluated on "
           "every evaluation set (joint head; rates in %). Per-run reports: "
           "`<known>/<model>/eval/<checkpoint>/report.md`.", ""]
  matrices = {}
  for metric, title in (("d_eer", "D-EER %"), ("auc", "AUC")):
    rows = []
    for model in models:
      m = np.full((len(known), len(columns)), np.nan)
      for r, k in enumerate(known):
        name = f"{model}@{k}" if k else model
        res = results.get(name)
        if res is None:
          continue
        for c, split in enumerate(configs[name].data.eval_splits[:len(columns)]):
          entry = res["splits"].get(split)
          if entry is not None:
            m[r, c] = entry["metrics_joint"][metric] * (100 if metric == "d_eer" else 1)
        rows.append([model, k] + [("-" if np.isnan(v) else
                                   (f"{v:.1f}" if metric == "d_eer" else f"{v:.3f}"))
                                  for v in m[r]])
      if metric == "d_eer":
        matrices[model] = m
    lines += [f"## {title}", "", *markdown_table(["model", "known"] + columns, rows), ""]
  robust_rows, conditions = [], []
  for name, _ in cells:
    model, _, k = name.partition("@")
    for split, by_condition in (results.get(name) or {}).get("robustness", {}).items():
      conditions = list(by_condition)
      robust_rows.append([model, k, split] + [
          f"{100 * by_condition[c]['metrics_joint']['d_eer']:.1f}" for c in conditions])
  if robust_rows:
    lines += ["## Robustness (D-EER %, joint head)", "",
              *markdown_table(["model", "known", "eval split"] + conditions, robust_rows), ""]
  plot_heatmaps(matrices, known, columns, os.path.join(workdir, "heatmap.png"))
  lines += ["## Heatmap", "", "![Cross-model D-EER](heatmap.png)", ""]
  path = os.path.join(workdir, "report.md")
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("\n".join(lines))
  with tf.io.gfile.GFile(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump(dict(results), f, indent=2, default=str)
  return path
