"""The comparison table of issue #38 from a finished generalization sweep.

  python benchmarks/generalization_table.py --workdir=runs/generalization
      [--known=stylegan2] [--baseline=today]
  python benchmarks/generalization_table.py --workdir=runs/lofo --lofo

Reads every `<workdir>/<known>/<recipe>/seed<k>/eval/<checkpoint>/` (metrics.json
and the score files) and prints Markdown tables, mean ± standard deviation over
the seeds, then paired comparisons of each recipe against the baseline on the
same evaluation images (`stats.paired_comparison`, seeds paired):

* known-family D-EER and the robustness rows (D-EER under each condition);
* the unseen camera (real2 against the known family): AUC, BPCER at the dev
  threshold, and detection of the known family at a threshold calibrated on
  half of real2's images for 5 % false alarms (the other half measures the
  false alarms it really gives);
* the five unseen families' D-EER, each and their mean;
* verdict flips: the share of images whose side of the dev threshold changes
  under jpeg:95 or resize:0.9;
* decided verdicts: the share given `real` or `synthetic` by predict's rule
  (outside the dev-fitted unsure band, and not flipped by jpeg:95 / resize:0.9),
  on real2's images and on the known family's.

Nothing here chooses anything: the tables only report.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cmfl_jax.data.synthetic import FAMILIES  # noqa: E402
from cmfl_jax.evaluation import stats  # noqa: E402
from cmfl_jax.verdicts import selective  # noqa: E402

FLIP_CONDITIONS = ("jpeg:95", "resize:0.9")
FALSE_ALARM_TARGET = 0.05


def read_scores(path: str) -> tuple[np.ndarray, np.ndarray]:
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  return (np.asarray([int(r["label"]) for r in rows]),
          np.asarray([float(r["score"]) for r in rows]))


def run_dirs(workdir: str, known: str) -> dict[str, list[str]]:
  """recipe -> its runs' evaluation folders, by seed."""
  out: dict[str, list[str]] = {}
  for seed_dir in sorted(glob.glob(os.path.join(workdir, known, "*", "seed*"))):
    evals = sorted(glob.glob(os.path.join(seed_dir, "eval", "*", "metrics.json")))
    if evals:
      out.setdefault(seed_dir.split(os.sep)[-2], []).append(os.path.dirname(evals[-1]))
  return out


def calibrated_detection(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
  """Threshold at the 5 % quantile of real2's even-numbered images' scores:
  (share of fakes below it, share of real2's odd-numbered images below it)."""
  real = np.flatnonzero(labels == 1)
  calibrate, held = real[0::2], real[1::2]
  threshold = np.quantile(scores[calibrate], FALSE_ALARM_TARGET)
  return float(np.mean(scores[labels == 0] < threshold)), float(np.mean(scores[held] < threshold))


def one_run(eval_dir: str, known: str) -> dict[str, Any]:
  metrics = json.load(open(os.path.join(eval_dir, "metrics.json")))
  threshold = metrics["dev_threshold"]
  known_split, real2_split = f"real_eval+{known}_eval", f"real2_eval+{known}_eval"
  row: dict[str, Any] = {}
  m = metrics["splits"]
  row["known D-EER"] = m[known_split]["metrics_joint"]["d_eer"]
  real2 = m[real2_split]["metrics_joint"]
  row["real2 AUC"] = real2["auc"]
  row["real2 BPCER@dev"] = real2["bpcer@dev"]
  labels2, scores2 = read_scores(os.path.join(eval_dir, f"{real2_split}_scores.csv"))
  row["real2-calibrated detection"], row["real2-calibrated false alarms"] = (
      calibrated_detection(labels2, scores2))
  unseen = [f for f in FAMILIES if f != known]
  for f in unseen:
    row[f"{f} D-EER"] = m[f"real_eval+{f}_eval"]["metrics_joint"]["d_eer"]
  row["unseen mean D-EER"] = float(np.mean([row[f"{f} D-EER"] for f in unseen]))
  for condition, entry in metrics["robustness"].get(known_split, {}).items():
    if condition != "none":
      row[f"{condition} D-EER"] = entry["metrics_joint"]["d_eer"]
  band = (m[known_split].get("verdicts") or {}).get("band")
  for name, split in (("known", known_split), ("real2", real2_split)):
    labels, base = read_scores(os.path.join(eval_dir, f"{split}_scores.csv"))
    flipped = np.zeros(len(base), bool)
    for condition in FLIP_CONDITIONS:
      path = os.path.join(eval_dir, f"{split}@{condition.replace(':', '')}_scores.csv")
      if os.path.exists(path):
        flipped |= (read_scores(path)[1] >= threshold) != (base >= threshold)
    row[f"{name} flipped by jpeg:95/resize:0.9"] = float(flipped.mean())
    decided = ~flipped
    if band:
      decided &= selective.verdicts(base, band) >= 0
    real_or_fake = (labels == 1) if name == "real2" else (labels == 0)
    row[f"{name}: decided share"] = float(decided[real_or_fake].mean())
  return row


def paired(eval_dirs_a: list[str], eval_dirs_b: list[str], split: str,
           metric: str) -> dict[str, Any]:
  def stack(dirs):
    runs = [read_scores(os.path.join(d, f"{split}_scores.csv")) for d in dirs]
    return runs[0][0], np.stack([s for _, s in runs])
  labels, a = stack(eval_dirs_a)
  _, b = stack(eval_dirs_b)
  n = min(len(a), len(b))
  return stats.paired_comparison(labels, a[:n], b[:n], metric=metric, n_resamples=1000,
                                 n_permutations=1000)


def lofo_table(workdir: str) -> None:
  """`configs/generalization.py:lofo`: each fold's held-out family D-EER (and
  the known families' mean), then the all-families run's D-EERs."""
  print("| held-out family | its D-EER | known families' mean D-EER | real2 vs it: AUC |")
  print("|---|---|---|---|")
  held = []
  for family in FAMILIES:
    found = glob.glob(os.path.join(workdir, f"without_{family}", "both", "eval", "*",
                                   "metrics.json"))
    if not found:
      print(f"| {family} | (not run) | | |")
      continue
    m = json.load(open(sorted(found)[-1]))["splits"]
    d = {f: m[f"real_eval+{f}_eval"]["metrics_joint"]["d_eer"] for f in FAMILIES}
    held.append(d[family])
    known = np.mean([v for f, v in d.items() if f != family])
    auc = m[f"real2_eval+{family}_eval"]["metrics_joint"]["auc"]
    print(f"| {family} | {d[family] * 100:.1f} | {known * 100:.1f} | {auc:.3f} |")
  if held:
    print(f"| **mean of held-out** | **{np.mean(held) * 100:.1f}** | | |")
  found = glob.glob(os.path.join(workdir, "all", "both", "eval", "*", "metrics.json"))
  if found:
    m = json.load(open(sorted(found)[-1]))["splits"]
    cells = ", ".join(f"{f} {m[f'real_eval+{f}_eval']['metrics_joint']['d_eer'] * 100:.1f}"
                      for f in FAMILIES)
    real2 = m["real2_eval+stylegan2_eval"]["metrics_joint"]
    print(f"\nAll six families known (D-EER %): {cells}; real2 vs stylegan2 AUC "
          f"{real2['auc']:.3f}, BPCER@dev {real2['bpcer@dev'] * 100:.1f} %")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--known", default="stylegan2")
  parser.add_argument("--baseline", default="today")
  parser.add_argument("--lofo", action="store_true",
                      help="the leave-one-family-out grid (configs/generalization.py:lofo)")
  args = parser.parse_args()
  if args.lofo:
    lofo_table(args.workdir)
    return
  runs = run_dirs(args.workdir, args.known)
  if not runs:
    sys.exit(f"error: no finished runs under {args.workdir}/{args.known}/*/seed*/eval/")
  rows = {recipe: [one_run(d, args.known) for d in dirs] for recipe, dirs in runs.items()}
  keys = list(next(iter(rows.values()))[0])
  recipes = list(rows)
  print("| measure | " + " | ".join(f"{r} (n={len(rows[r])})" for r in recipes) + " |")
  print("|---|" + "---|" * len(recipes))
  for key in keys:
    cells = []
    for r in recipes:
      values = np.asarray([run.get(key, np.nan) for run in rows[r]], float)
      scale = 1 if key.endswith("AUC") else 100
      cells.append(f"{np.nanmean(values) * scale:.1f} ± {np.nanstd(values) * scale:.1f}"
                   if scale == 100 else f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}")
    print(f"| {key} | " + " | ".join(cells) + " |")
  if args.baseline not in runs:
    return
  print(f"\nPaired against `{args.baseline}` on the same images (mean over seeds, 95 % "
        "paired bootstrap interval, permutation p):\n")
  splits = [f"real_eval+{args.known}_eval", f"real2_eval+{args.known}_eval"] + [
      f"real_eval+{f}_eval" for f in FAMILIES if f != args.known]
  print("| recipe | split | ΔD-EER pp [95% CI] | p |")
  print("|---|---|---|---|")
  for recipe in recipes:
    if recipe == args.baseline:
      continue
    for split in splits:
      c = paired(runs[recipe], runs[args.baseline], split, "d_eer")
      lo, hi = c["low"], c["high"]
      print(f"| {recipe} | {split} | {c['effect'] * 100:+.1f} [{lo * 100:+.1f}, "
            f"{hi * 100:+.1f}] | {c['p_value']:.3f} |")


if __name__ == "__main__":
  main()
