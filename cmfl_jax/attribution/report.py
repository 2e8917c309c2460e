"""The evaluation report's attribution section: closed-set accuracy beside
chance, open-set AUROC per unseen family, the share called "unknown", and the
confusion matrix (table and picture)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cmfl_jax.attribution import openset


def _pct(v: float | None) -> str:
  return "-" if v is None else f"{100 * v:.1f}"


def _ci(entry: Mapping[str, float], percent: bool = True) -> str:
  scale, digits = (100, 1) if percent else (1, 3)
  return (f"{entry['value'] * scale:.{digits}f} [{entry['low'] * scale:.{digits}f}, "
          f"{entry['high'] * scale:.{digits}f}]")


def table(entry: Mapping[str, Any] | None) -> list[str]:
  """Markdown lines of `metrics.json`'s `attribution` entry (empty without one)."""
  if not entry:
    return []
  classes = entry["classes"]
  lines = [f"Classes: {', '.join(classes)}. Closed-set accuracy (argmax over the known "
           f"classes, on the eval images of the sources trained on): "
           f"{_ci(entry['closed_set_accuracy'])} %, chance {_pct(entry['chance'])} %; balanced "
           f"(mean per class) {_pct(entry['balanced_accuracy'])} %, chance "
           f"{_pct(entry['balanced_chance'])} %. Per class: "
           + ", ".join(f"{c} {_pct(v)} %" for c, v in entry["per_class_accuracy"].items())
           + f". Known images called unknown at the dev threshold: "
           f"{_pct(entry['known_rejected'])} % (target {_pct(1 - entry['known_acceptance'])} "
           "%).", ""]
  if "open_set_auroc" in entry:
    rules = entry["open_set_auroc_by_rule"]
    lines += ["| unseen family | open-set AUROC (" + entry["rule"] + ") | AUROC (max softmax) | "
              "called unknown % |", "|---|---|---|---|"]
    for family in [*entry["unseen_sources"], "overall"]:
      pick = (lambda r: r["overall"]) if family == "overall" else (
          lambda r: r["per_family"][family])
      lines.append(f"| {family} | {_ci(pick(rules[entry['rule']]), False)} | "
                   f"{_ci(pick(rules['max_softmax']), False)} | "
                   f"{_pct(entry['unknown_share'][family])} |")
    lines += ["", "AUROC: known generators' eval images against the unseen family's (bona "
              "fide left out: that is the detector's task), 95% bootstrap intervals."]
  counts = entry["open_confusion"]["counts"]
  columns = entry["open_confusion"]["columns"]
  lines += ["", "Decisions per source (rows) at the dev threshold:", "",
            "| source | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for source, row in counts.items():
    lines.append(f"| {source} | " + " | ".join(str(c) for c in row) + " |")
  return lines


def plot_confusion(entry: Mapping[str, Any] | None, path: str) -> bool:
  """Row-normalised decisions per source (known first, then unseen), with
  "unknown" as the last column; False when there is no attribution entry."""
  if not entry:
    return False
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import tensorflow as tf
  counts = entry["open_confusion"]["counts"]
  rows = [*entry["known_sources"], *entry.get("other_bona_fide_sources", []),
          *entry["unseen_sources"]]
  matrix = np.asarray([counts[r] for r in rows], float)
  shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
  columns = entry["open_confusion"]["columns"]
  fig, ax = plt.subplots(figsize=(1.6 + 0.8 * len(columns), 1.0 + 0.45 * len(rows)))
  ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
  ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=7)
  ax.set_yticks(range(len(rows)), [r + (" (unseen)" if r in entry["unseen_sources"] else "")
                                   for r in rows], fontsize=7)
  for (i, j), v in np.ndenumerate(shares):
    ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=6,
            color="white" if v > 0.5 else "black")
  ax.set_xlabel(f"decision ({openset.UNKNOWN}: {entry['rule']} below the dev threshold)",
                fontsize=7)
  ax.set_title("Attribution: % of each source's eval images", fontsize=8)
  fig.tight_layout()
  with tf.io.gfile.GFile(path, "wb") as f:
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)
  return True
