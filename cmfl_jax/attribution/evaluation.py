"""How well the attribution head names the generator, and how well it says
"unknown" for generators it never saw: `metrics.json`'s `attribution` entry.

Images are grouped by their source name (the split's `generators`) over all
evaluation splits, each source taken once (the bona fide eval images recur in
every per-family split). Known sources are those of the dev split the rule
was fitted on (bona fide and the training generators); every other generator
is an unseen family. Bona fide images of other sources (a camera never seen,
as the benchmark's real2) are class 0 but not known: they appear in the
decisions table only.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from cmfl_jax.attribution import openset
from cmfl_jax.attribution.classes import UNSEEN, source_ids
from cmfl_jax.data.split import Split
from cmfl_jax.evaluation import stats


def collect(per_split: Mapping[str, tuple[Split, np.ndarray]], classes: Sequence[str]
            ) -> dict[str, dict[str, Any]]:
  """source name -> {"logits" [n, K], "label" (bona fide 1 / attack 0),
  "class" (index or UNSEEN)}, each source from the first split that has it."""
  out: dict[str, dict[str, Any]] = {}
  for split, logits in per_split.values():
    ids = source_ids(split, classes)
    for name in dict.fromkeys(split.generators.tolist()):
      if name in out:
        continue
      rows = split.generators == name
      out[name] = {"logits": np.asarray(logits)[rows], "label": int(split.labels[rows][0]),
                   "class": int(ids[rows][0])}
  return out


def _accuracy_interval(correct: np.ndarray, n_resamples: int, confidence: float,
                       seed: int) -> dict[str, float]:
  """Percentile bootstrap of a mean of 0/1 values: resampling n values with
  replacement draws Binomial(n, mean) correct ones, so the draws are exact."""
  n, k = correct.size, int(correct.sum())
  draws = np.random.default_rng(seed).binomial(n, k / n, n_resamples) / n
  low, high = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
  return {"value": k / n, "low": float(low), "high": float(high)}


def _auroc(known: np.ndarray, unseen: np.ndarray, n_resamples: int, confidence: float,
           seed: int) -> dict[str, float]:
  """AUROC of known (positive) against unseen scores, with a bootstrap interval
  (each side resampled apart, `stats.bootstrap_summary`)."""
  labels = np.concatenate([np.ones(known.size, int), np.zeros(unseen.size, int)])
  return stats.bootstrap_summary(labels, np.concatenate([known, unseen]), {}, n_resamples,
                                 confidence, seed, keys=("auc",))["auc"]


def evaluate(sources: Mapping[str, Mapping[str, Any]], fitted: Mapping[str, Any],
             n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
             ) -> dict[str, Any]:
  """The `attribution` entry of metrics.json (see the module docstring).

  closed_set_accuracy: argmax over the known classes, on the known sources'
  images, beside `chance` (the largest class share: always answering it);
  balanced_accuracy: the mean of the per-class accuracies, beside
  `balanced_chance` (1 / classes present).
  open_set_auroc: the rule's score, known generators' images (positive)
  against each unseen family's and all of them; bona fide images are left
  out, since telling them from unseen generators is the detector's job.
  unknown_share: the share of each unseen family called "unknown" at the
  dev threshold; known_rejected: the share of known images called so.
  """
  classes = list(fitted["classes"])
  seen = set(fitted.get("dev_sources", sources))
  known = {n: s for n, s in sources.items() if s["class"] != UNSEEN and n in seen}
  unseen = {n: s for n, s in sources.items() if s["class"] == UNSEEN}
  if not known:
    raise ValueError("attribution: no evaluation image of a known class")
  truth = np.concatenate([np.full(len(s["logits"]), s["class"]) for s in known.values()])
  logits = np.concatenate([s["logits"] for s in known.values()])
  guess = logits.argmax(axis=-1)
  confusion = np.zeros((len(classes), len(classes)), int)
  np.add.at(confusion, (truth, guess), 1)
  shares = np.bincount(truth, minlength=len(classes)) / truth.size
  per_class = {c: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
               for i, c in enumerate(classes)}
  present = [v for v in per_class.values() if v is not None]
  decided = {n: openset.decide(s["logits"], fitted)[0] for n, s in sources.items()}
  # Rows: every source; columns: the classes, then "unknown" (the decision with rejection).
  open_confusion = {n: (np.bincount(np.where(d == UNSEEN, len(classes), d),
                                    minlength=len(classes) + 1)).tolist()
                    for n, d in decided.items()}
  out: dict[str, Any] = {
      "classes": classes, "rule": fitted["rule"], "threshold": fitted["threshold"],
      "known_acceptance": fitted["known_acceptance"],
      "known_sources": sorted(known), "unseen_sources": sorted(unseen),
      "other_bona_fide_sources": sorted(set(sources) - set(known) - set(unseen)),
      "closed_set_accuracy": _accuracy_interval(guess == truth, n_resamples, confidence, seed),
      "chance": float(shares.max()),
      "balanced_accuracy": float(np.mean(present)),
      "balanced_chance": 1.0 / len(present),
      "per_class_accuracy": per_class,
      "confusion": {"rows": classes, "columns": classes, "counts": confusion.tolist()},
      "open_confusion": {"columns": classes + [openset.UNKNOWN], "counts": open_confusion},
      "known_rejected": float(np.mean(np.concatenate(
          [decided[n] == UNSEEN for n in known]))),
  }
  attacks = [s["logits"] for s in known.values() if s["label"] == 0]
  if unseen and attacks:
    known_logits = np.concatenate(attacks)
    by_rule = {}
    for rule, score in openset.RULES.items():
      k = score(known_logits)
      per = {n: _auroc(k, score(s["logits"]), n_resamples, confidence, seed)
             for n, s in sorted(unseen.items())}
      overall = _auroc(k, np.concatenate([score(s["logits"]) for s in unseen.values()]),
                       n_resamples, confidence, seed)
      by_rule[rule] = {"overall": overall, "per_family": per}
    out["open_set_auroc"] = by_rule[fitted["rule"]]
    out["open_set_auroc_by_rule"] = by_rule  # the rule chosen beside the alternative
    out["unknown_share"] = {n: float(np.mean(decided[n] == UNSEEN)) for n in sorted(unseen)}
    out["unknown_share"]["overall"] = float(np.mean(np.concatenate(
        [decided[n] == UNSEEN for n in unseen])))
  return out
