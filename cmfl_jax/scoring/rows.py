"""Rows in input order, streamed: files or faces read ahead and scored in
fixed-size batches, so memory does not grow with the number of inputs."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from cmfl_jax.data import ops
from cmfl_jax.scoring import faces, files
from cmfl_jax.scoring.model import Model


def _scored(rows: Iterable[dict], score: Callable[[np.ndarray], np.ndarray],
            batch_size: int) -> Iterator[dict]:
  """`rows` in the same order, each "image" replaced by its score; images are
  scored `batch_size` at a time, so at most one batch of them waits here."""
  pending: list[dict] = []
  waiting = 0

  def flush():
    with_image = [r for r in pending if "image" in r]
    if with_image:
      for row, s in zip(with_image, score(np.stack([r.pop("image") for r in with_image]))):
        row.update(s if isinstance(s, dict) else {"score": float(s)})
    yield from pending
    pending.clear()

  for row in rows:
    pending.append(row)
    waiting += "image" in row
    if waiting == batch_size or not waiting:
      yield from flush()
      waiting = 0
  yield from flush()


def scored_rows(model: Model, paths: Sequence[str], geometry: ops.Geometry, align=None,
                score: Callable | None = None) -> Iterator[dict]:
  """Rows {path, score | error, ...} in input order, streamed (see `predict`);
  `score` (default `model.score`) may return a dict per image instead."""
  batch_size = model.config.train.eval_batch_size
  found = (faces.face_rows(paths, align, geometry) if align
           else files.file_rows(paths, geometry, model.config.data, batch_size))
  yield from _scored(found, score or model.score, batch_size)
