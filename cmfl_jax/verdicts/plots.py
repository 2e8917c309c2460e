"""The evaluation report's verdict section: per split the share `unsure` and
the error on the images given a verdict, and the risk-coverage curves."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def table(results: Mapping[str, Any]) -> list[str]:
  """Markdown lines (empty if no split has a band)."""
  entries = {n: e["verdicts"] for n, e in results["splits"].items()
             if e.get("verdicts", {}).get("band")}
  if not entries:
    return []
  band = next(iter(entries.values()))["band"]
  pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
  lines = ["| eval split | unsure % | error on verdicts % | false alarms % | missed attacks % |",
           "|---|---|---|---|---|"]
  for name, e in entries.items():
    lines.append(f"| {name} | {pct(e['unsure_share'])} | {pct(e['selective_error'])} | "
                 f"{pct(e['false_alarm'])} | {pct(e['missed_attack'])} |")
  return lines + ["", f"Unsure band [{band['lo']:.4f}, {band['hi']:.4f}) around the dev "
                  f"threshold {band['threshold']:.4f}, fitted on the dev split so that the dev "
                  f"images given a verdict have error <= {100 * band['target_error']:g} % "
                  f"(dev: {100 * band['dev_coverage']:.1f} % covered, "
                  f"{100 * band['dev_error']:.1f} % error). False alarms: bona fide called "
                  "synthetic; missed attacks: synthetic called real; both over all images of "
                  "the class, unsure ones included. Stability under post-processing is "
                  "checked by `predict`, not here."]


def plot_risk_coverage(results: Mapping[str, Any], path: str) -> bool:
  """Error on the covered images against coverage (abstaining nearest the
  threshold first), one line per split; False if there is nothing to plot."""
  curves = {n: e["verdicts"] for n, e in results["splits"].items() if e.get("verdicts")}
  if not curves:
    return False
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, e in curves.items():
    rc = e["risk_coverage"]
    line, = ax.plot(rc["coverage"], 100 * np.asarray(rc["risk"]), lw=1, label=name)
    if e.get("band"):
      ax.plot([e["coverage"]], [100 * e["selective_error"]], "o", color=line.get_color(), ms=4)
  ax.set_xlabel("coverage (share given a verdict)", fontsize=8)
  ax.set_ylabel("error on verdicts %", fontsize=8)
  ax.set_xlim(0, 1)
  ax.legend(fontsize=6)
  ax.set_title("risk-coverage (dot: the dev-fitted band)", fontsize=8)
  fig.tight_layout()
  import tensorflow as tf  # the workdir may be remote (gs://, ram://)
  with tf.io.gfile.GFile(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)
  return True
