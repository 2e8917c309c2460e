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
from absl import logging

from cmfl_jax.attribution import report as attribution_report
from cmfl_jax.evaluation import metrics
from cmfl_jax.explanations import frequencies
from cmfl_jax.verdicts import plots as verdict_plots

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


def _fmt_ci(key: str, value: float | None, interval: Mapping[str, float] | None) -> str:
  """"value [low, high]" when the bootstrap interval is known."""
  if interval is None or value is None:
    return _fmt(key, value)
  return f"{_fmt(key, value)} [{_fmt(key, interval['low'])}, {_fmt(key, interval['high'])}]"


def split_table(results: Mapping[str, Any], head: str = "joint") -> list[str]:
  """One row per evaluation split: every headline metric of one head, each
  with its bootstrap interval."""
  rows = []
  for name, entry in results["splits"].items():
    m = entry.get(f"metrics_{head}")
    ci = entry.get(f"intervals_{head}") or {}
    if m is not None:
      rows.append([name, str(entry["count"])]
                  + [_fmt_ci(k, m.get(k), ci.get(k)) for k, _ in _COLUMNS])
  return markdown_table(["eval split", "n"] + [h for _, h in _COLUMNS], rows)


_POINT_NAMES = {"eer": "dev EER", "apcer_1": "dev APCER=1%", "apcer_5": "dev APCER=5%",
                "bpcer_1": "dev BPCER=1%", "bpcer_5": "dev BPCER=5%"}


def operating_points_table(results: Mapping[str, Any]) -> list[str]:
  """APCER / BPCER (%) with intervals at the thresholds fixed on the dev set,
  applied unchanged to every split, and a plain-words verdict per split."""
  entries = {n: e["operating_points"] for n, e in results["splits"].items()
             if e.get("operating_points")}
  if not entries:
    return []
  names = list(next(iter(entries.values()))["points"])
  header = ["eval split"] + [f"{_POINT_NAMES.get(p, p)}: APCER / BPCER %" for p in names]
  rows, words = [], []
  for split, op in entries.items():
    rows.append([split] + [" / ".join(_fmt_ci("x", op["points"][p][r]["value"], op["points"][p][r])
                                      for r in ("apcer", "bpcer")) for p in names])
    if "eer_transfer" in op:
      words.append(f"* `{split}`: {op['eer_transfer']['message']}.")
  return markdown_table(header, rows) + [""] + words


def calibration_table(results: Mapping[str, Any]) -> list[str]:
  """Expected calibration error of the joint head's P(real) per split, before
  and after the Platt calibration fitted on the dev set (AUC unchanged)."""
  entries = {n: e["calibration"] for n, e in results["splits"].items() if e.get("calibration")}
  if not entries:
    return []
  bins = next(iter(entries.values()))["n_bins"]
  rows = [[n, f"{100 * c['ece']:.1f}",
           f"{100 * c['ece_calibrated']:.1f}" if "ece_calibrated" in c else "-"]
          for n, c in entries.items()]
  return markdown_table(["eval split", "ECE % (raw)", "ECE % (calibrated)"], rows) + [
      "", f"ECE: {bins} equal-width bins of P(real), weighted by count; |mean P(real) - "
      "bona fide frequency| per bin. Calibration: Platt scaling sigmoid(a * logit + b), a > 0, "
      "fitted on the dev set at the stored checkpoint."]


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


def plot_reliability(entries: Mapping[str, Mapping[str, Any]], path: str) -> None:
  """Reliability diagram per split: observed bona fide frequency against mean
  P(real) per bin, raw and calibrated."""
  plt = _pyplot()
  n = len(entries)
  cols = min(n, 4)
  rows = (n + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
  for ax, (name, c) in zip(axes.ravel(), entries.items()):
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    for key, label in (("reliability", "raw"), ("reliability_calibrated", "calibrated")):
      if key in c:
        curve = c[key]
        keep = np.asarray(curve["count"]) > 0
        ax.plot(np.asarray(curve["mean_predicted"])[keep],
                np.asarray(curve["observed_frequency"])[keep], marker="o", ms=3, label=label)
    ax.set_title(name, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean P(real)", fontsize=7)
    ax.set_ylabel("bona fide frequency", fontsize=7)
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  axes.ravel()[0].legend(fontsize=7)
  fig.tight_layout()
  _save(fig, path)


def plot_heatmaps(matrices: Mapping[str, np.ndarray], row_labels: Sequence[str],
                  col_labels: Sequence[str], path: str, what: str = "D-EER %",
                  marks: Mapping[str, np.ndarray] | None = None) -> None:
  """One annotated heatmap per model variant (rows: known family, cols: eval)."""
  plt = _pyplot()
  n = len(matrices)
  fig, axes = plt.subplots(1, n, figsize=(1.0 + 0.9 * len(col_labels) * n,
                                          1.2 + 0.5 * len(row_labels)), squeeze=False)
  for ax, (name, m) in zip(axes[0], matrices.items()):
    ax.imshow(m, cmap="viridis_r", vmin=0, vmax=50)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    marked = (marks or {}).get(name)
    for (i, j), v in np.ndenumerate(m):
      star = "*" if marked is not None and marked[i, j] else ""
      ax.text(j, i, "-" if np.isnan(v) else f"{v:.1f}{star}", ha="center", va="center",
              fontsize=6, color="white" if v > 25 else "black")
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
           "Rates in %; label 1 = bona fide; score = P(real). Brackets: 95% stratified "
           "bootstrap intervals (bona fide and attack scores resampled apart).", "",
           "## Cross-model evaluation (joint head)", "", *split_table(results)]
  if any("metrics_rgb" in e for e in results["splits"].values()):
    lines += ["", "## Per head", "", *heads_table(results)]
  robust = robustness_table(results)
  if robust:
    lines += ["", "## Robustness to post-processing (joint head)", "", *robust]
  points = operating_points_table(results)
  if points:
    lines += ["", "## Operating points fixed on the dev set (joint head)", "", *points]
  calibration = calibration_table(results)
  if calibration:
    lines += ["", "## Calibration (joint head)", "", *calibration]
  verdict_lines = verdict_plots.table(results)
  if verdict_lines:
    lines += ["", "## Verdicts: real, synthetic, unsure (joint head)", "", *verdict_lines]
  attribution_lines = attribution_report.table(results.get("attribution"))
  if attribution_lines:
    lines += ["", "## Which generator: attribution and unseen generators", "",
              *attribution_lines]
  return lines


def write_eval_report(results: Mapping[str, Any],
                      curves: Mapping[str, tuple[np.ndarray, np.ndarray]], out_dir: str) -> str:
  """report.md, det.png and hist.png in `out_dir`; returns the report path."""
  plot_det(curves, os.path.join(out_dir, "det.png"), f"DET, {results['checkpoint']}")
  plot_histograms(curves, os.path.join(out_dir, "hist.png"))
  lines = [f"# Evaluation report: {results['checkpoint']}", "", *summary_lines(results), "",
           "## Plots", "", "![DET curves per evaluation split](det.png)", "",
           "![Score histograms](hist.png)", ""]
  calibration = {n: e["calibration"] for n, e in results["splits"].items()
                 if e.get("calibration")}
  if calibration:
    plot_reliability(calibration, os.path.join(out_dir, "reliability.png"))
    lines += ["![Reliability diagrams, raw and calibrated](reliability.png)", ""]
  if verdict_plots.plot_risk_coverage(results, os.path.join(out_dir, "risk_coverage.png")):
    lines += ["![Risk-coverage: error on the images given a verdict](risk_coverage.png)", ""]
  if attribution_report.plot_confusion(results.get("attribution"),
                                       os.path.join(out_dir, "attribution.png")):
    lines += ["![Attribution decisions per source, unknown included](attribution.png)", ""]
  lines += frequencies.report_lines(results.get("frequencies"))
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


def _per_seed(res: Any) -> list[Mapping[str, Any]]:
  return list(res) if isinstance(res, (list, tuple)) else [res]


def paired_comparisons(cells: Sequence[tuple[str, Any]], results: Mapping[str, Any],
                       compare: Sequence[tuple[str, str]], n_resamples: int = 1000,
                       seed: int = 0) -> list[dict[str, Any]]:
  """For each (model A, model B) pair, known data and evaluation split: the
  D-EER difference A - B averaged over seeds, its paired-bootstrap interval
  and the permutation-test p-value, on the same evaluation images (joint-head
  score files of each run)."""
  from cmfl_jax.evaluation import score_files, stats
  configs = dict(cells)
  out = []
  for model_a, model_b in compare:
    for name_a in [n for n, _ in cells if n.partition("@")[0] == model_a]:
      known = name_a.partition("@")[2]
      name_b = f"{model_b}@{known}" if known else model_b
      if name_b not in results or name_a not in results:
        continue
      for split in configs[name_a].data.eval_splits:
        def files_of(name):
          return [os.path.join(r.get("out_dir", ""), f"{split}_scores.csv")
                  for r in _per_seed(results[name])]

        def scores_of(name):
          rows = [score_files.read_scores(p) for p in files_of(name)]
          return rows[0][0], np.stack([s for _, s, _ in rows])
        missing = [p for p in files_of(name_a) + files_of(name_b) if not tf.io.gfile.exists(p)]
        if missing:
          logging.warning("paired comparison %s vs %s on %s skipped: no score file %s",
                          name_a, name_b, split, missing[0])
          continue
        labels, a = scores_of(name_a)
        _, b = scores_of(name_b)
        if a.shape != b.shape:
          logging.warning("paired comparison %s vs %s on %s skipped: %s vs %s runs x images",
                          name_a, name_b, split, a.shape, b.shape)
          continue
        test = stats.paired_comparison(labels, a, b, "d_eer", n_resamples=n_resamples,
                                       seed=seed)
        out.append({"a": model_a, "b": model_b, "known": known, "split": split,
                    "seeds": a.shape[0], **{k: test[k] for k in
                                            ("effect", "low", "high", "p_value")}})
  return out


def write_sweep_report(cells: Sequence[tuple[str, Any]], results: Mapping[str, Any],
                       workdir: str, compare: Sequence[tuple[str, str]] = ()) -> str:
  """The combined report of a sweep: D-EER and AUC matrices (rows: model /
  known data, columns: evaluation sets; mean ± std over seeds when the runs
  have several), heatmaps (paired differences with p < 0.05 marked *),
  robustness on the known family, and the paired comparisons of `compare`;
  `report.md`, `heatmap.png` and `sweep.json` in `workdir`."""
  columns = sweep_columns(cells)
  models = list(dict.fromkeys(name.partition("@")[0] for name, _ in cells))
  known = list(dict.fromkeys(name.partition("@")[2] for name, _ in cells))
  configs = dict(cells)
  n_seeds = max(len(_per_seed(r)) for r in results.values())
  lines = ["# Cross-model comparison", "",
           f"Models trained on each known family ({', '.join(known)}) and evaluated on "
           "every evaluation set (joint head; rates in %"
           + (f"; mean ± standard deviation over {n_seeds} seeds" if n_seeds > 1 else "")
           + "). Per-run reports: `<known>/<model>/eval/<checkpoint>/report.md`.", ""]
  matrices = {}
  for metric, title in (("d_eer", "D-EER %"), ("auc", "AUC")):
    scale, digits = (100, 1) if metric == "d_eer" else (1, 3)
    rows = []
    for model in models:
      m = np.full((len(known), len(columns)), np.nan)
      cells_text = [["-"] * len(columns) for _ in known]
      for r, k in enumerate(known):
        name = f"{model}@{k}" if k else model
        if name not in results:
          continue
        for c, split in enumerate(configs[name].data.eval_splits[:len(columns)]):
          values = [scale * res["splits"][split]["metrics_joint"][metric]
                    for res in _per_seed(results[name]) if split in res["splits"]]
          if values:
            m[r, c] = float(np.mean(values))
            cells_text[r][c] = (f"{m[r, c]:.{digits}f}" if len(values) == 1 else
                                f"{m[r, c]:.{digits}f} ± {np.std(values, ddof=1):.{digits}f}")
        rows.append([model, k] + cells_text[r])
      if metric == "d_eer":
        matrices[model] = m
    lines += [f"## {title}", "", *markdown_table(["model", "known"] + columns, rows), ""]
  robust_rows, conditions = [], []
  for name, _ in cells:
    model, _, k = name.partition("@")
    if name not in results:
      continue
    for split, by_condition in _per_seed(results[name])[0].get("robustness", {}).items():
      conditions = list(by_condition)
      robust_rows.append([model, k, split] + [
          f"{100 * by_condition[c]['metrics_joint']['d_eer']:.1f}" for c in conditions])
  if robust_rows:
    lines += ["## Robustness (D-EER %, joint head" + (", first seed" if n_seeds > 1 else "")
              + ")", "", *markdown_table(["model", "known", "eval split"] + conditions,
                                         robust_rows), ""]
  tests = paired_comparisons(cells, results, compare) if compare else []
  marks = {model: np.zeros((len(known), len(columns)), bool) for model in models}
  if tests:
    rows = []
    for t in tests:
      name_a = f"{t['a']}@{t['known']}" if t["known"] else t["a"]
      c = list(configs[name_a].data.eval_splits).index(t["split"])
      significant = t["p_value"] < 0.05
      if significant and c < len(columns):
        marks[t["a"]][known.index(t["known"]), c] = True
      rows.append([f"{t['a']} - {t['b']}", t["known"], t["split"], str(t["seeds"]),
                   f"{100 * t['effect']:+.2f} [{100 * t['low']:+.2f}, {100 * t['high']:+.2f}]",
                   f"{t['p_value']:.3f}" + (" *" if significant else "")])
    lines += ["## Paired comparisons (D-EER, joint head)", "",
              "Difference of D-EER (percentage points, A - B, mean over seeds) on the same "
              "evaluation images: 95% interval from a paired bootstrap (images resampled "
              "within each class, with the same indices for both models, and seeds "
              "resampled), p-value from a paired permutation test (per image and seed, the "
              "two models' scores swapped with probability 1/2: valid under the null that "
              "the two are exchangeable on every image, so it controls false positives; "
              "the bootstrap gives the interval). * p < 0.05, also marked on the heatmap.", "",
              *markdown_table(["A - B", "known", "eval split", "seeds", "ΔD-EER pp [95% CI]",
                               "p"], rows), ""]
  plot_heatmaps(matrices, known, columns, os.path.join(workdir, "heatmap.png"), marks=marks)
  lines += ["## Heatmap", "", "![Cross-model D-EER](heatmap.png)", ""]
  path = os.path.join(workdir, "report.md")
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("\n".join(lines))
  with tf.io.gfile.GFile(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump({"results": dict(results), "paired_comparisons": tests}, f, indent=2, default=str)
  return path
