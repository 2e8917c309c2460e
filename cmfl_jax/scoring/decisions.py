"""Verdicts for files: a model's scores turned into real / synthetic / unsure
with the stored (or a named) calibration, the stability check under
post-processing, the Platt-calibrated P(real) and the generator named by the
attribution head. `cmfl_jax.predict` is the command."""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from cmfl_jax.attribution import openset
from cmfl_jax.evaluation import evaluate, stats
from cmfl_jax.scoring import files, rows as rows_lib
from cmfl_jax.scoring.model import load_exported, load_model


@dataclasses.dataclass
class Predictions:
  """What `predict` returns: the verdict threshold (None: none stored, 0.5
  used), whether rows carry "platt" (P(real) after the dev-set Platt
  scaling; not the named calibration, which sets the threshold), the rows,
  produced lazily, the unsure band (None: none), the name of the calibration
  that decides (the one named, or the one an export carries; None: the dev
  threshold) and the attribution classes when rows carry "generator" and
  "generator_confidence" (empty: no attribution head)."""

  threshold: float | None
  platt: bool
  rows: Iterator[dict]
  band: dict | None = None
  calibration: str | None = None
  classes: tuple[str, ...] = ()


def predict(workdir: str | None, paths: Sequence[str], which: str = "best",
            aligned: bool | None = None, align=None, calibration: str | None = None,
            stability: Sequence[str] = (), model: str | None = None) -> Predictions:
  """Rows {path, score, verdict, reason | error[, platt][, generator,
  generator_confidence]} in input order, streamed: files are checked and
  decoded by tf.data a few batches ahead and scored in fixed-size batches,
  so memory does not grow with the number of paths. With `align` (`AlignOptions`) every photograph is first
  detected and aligned; rows then carry the face box and detection score.
  Scores come from checkpoint `which` of `workdir`, or with `model` from an
  exported model directory (which carries the calibration chosen at export).
  `calibration` names a stored calibration (`cmfl_jax.calibrate`) whose
  threshold and unsure band decide the verdicts; `stability` conditions
  (e.g. `verdicts.stability.CONDITIONS`) are scored too and a verdict that
  changes under one is unsure. With the attribution head, rows name the
  generator (`attribution.openset.decide` with the dev-fitted rule, or the
  export's own decision) and `Predictions.classes` lists the classes. The
  model is compiled before this returns."""
  from cmfl_jax import verdicts
  from cmfl_jax.verdicts import stability as stability_lib
  stability = stability_lib.check_conditions(stability)
  if model and calibration:
    raise ValueError("--calibration applies to a --workdir checkpoint; an exported model "
                     "carries the calibration chosen when it was exported")
  chosen = verdicts.load_calibration(workdir, calibration) if calibration else None
  loaded = load_exported(model) if model else load_model(workdir, which)
  config, meta = loaded.config, loaded.meta
  geometry = files.input_geometry(config, aligned, align)
  using = verdicts.binding.fitted_on(meta, loaded.name, config.data.image_size,
                                     geometry.aligned, bool(align))
  threshold, band, source = verdicts.rule(meta, chosen, calibration, using)
  calibration = source.split(":", 1)[1] if source.startswith("calibration:") else None
  platt = meta.get("calibration")
  cut = 0.5 if threshold is None else threshold

  def score(images: np.ndarray) -> list[dict]:
    heads = loaded.heads(images)
    main = heads["joint"]
    under = stability_lib.scores_under(images, loaded.score, stability)
    named = openset.answers(heads, loaded.classes, len(main))
    return [{"score": float(s), "under": {c: float(v[i]) for c, v in under.items()}, **named[i]}
            for i, s in enumerate(main)]

  def rows() -> Iterator[dict]:
    for row in rows_lib.scored_rows(loaded, paths, geometry, align, score):
      if "score" in row:
        unstable = stability_lib.unstable(row["score"], row.pop("under"), cut)
        row["verdict"], row["reason"] = verdicts.decide(row["score"], cut, band, unstable,
                                                        row.get("unsupported"))
        if platt:
          row["platt"] = float(stats.apply_calibration(
              platt, evaluate.logits_of(np.asarray([row["score"]])))[0])
      yield row

  return Predictions(threshold, platt is not None, rows(), band, calibration, loaded.classes)
