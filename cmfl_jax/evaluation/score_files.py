"""Score files in the official test script's format: `id,label,path,score`."""

from __future__ import annotations

import csv

import numpy as np
import tensorflow as tf

from cmfl_jax.data.split import Split

HEADER = ("id", "label", "path", "score")


def write_scores(path: str, split: Split, scores: np.ndarray) -> None:
  """One row per example in split order; score = P(real), label 1 = bona fide."""
  with tf.io.gfile.GFile(path, "w") as f:
    w = csv.writer(f)
    w.writerow(HEADER)
    for i in range(len(split)):
      w.writerow([i, int(split.labels[i]), split.where(i), f"{float(scores[i]):.8f}"])


def read_scores(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(labels, scores, paths) from a score file."""
  with tf.io.gfile.GFile(path) as f:
    rows = list(csv.DictReader(f))
  labels = np.asarray([int(r["label"]) for r in rows], np.int32)
  scores = np.asarray([float(r["score"]) for r in rows], np.float64)
  return labels, scores, [r["path"] for r in rows]
