"""Calibrating on a user's own bona fide images (`python -m cmfl_jax.calibrate`):
score them, set the threshold with the false-alarm guarantee (`conformal`),
measure its price on the dev split's attacks, fit the unsure band around it
on the dev split (`selective`), and store it all under a name (`store`)."""

from __future__ import annotations

import datetime
from typing import Any, Sequence

import numpy as np

from cmfl_jax.verdicts import binding, conformal, selective, stability, store


def check_before_scoring(workdir: str, name: str, count: int, alpha: float,
                         delta: float | None, overwrite: bool) -> None:
  """The mistakes found before any image is scored: a bad or taken name,
  fewer images than the requested rate needs (ValueError, one line)."""
  if store.exists(workdir, name) and not overwrite:
    raise store.CalibrationError(f"calibration {name!r} exists ({store.path(workdir, name)}); "
                                 "choose another --name or pass --overwrite")
  need = conformal.images_needed(alpha, delta)
  if count < need:
    raise conformal.NotEnoughImages(
        f"{count} bona fide images cannot guarantee a false-alarm rate of {alpha:g}"
        f"{f' at confidence {1 - delta:g}' if delta else ''}: at least {need} are needed")


def dev_price(labels: np.ndarray, scores: np.ndarray, threshold: float,
              band: dict[str, Any] | None, dev_threshold: float | None) -> dict[str, Any]:
  """What the threshold costs on the dev split: the share of its attacks
  still called synthetic (and with the band), against the dev threshold's."""
  labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
  attack, real = scores[labels != 1], scores[labels == 1]
  out = {"attacks": int(len(attack)), "bona_fide": int(len(real)),
         "detection": float(np.mean(attack < threshold)) if len(attack) else None,
         "false_alarm": float(np.mean(real < threshold)) if len(real) else None}
  if band:
    out["detection_with_band"] = float(np.mean(attack < band["lo"])) if len(attack) else None
    out["unsure_share"] = float(np.mean((scores >= band["lo"]) & (scores < band["hi"])))
  if dev_threshold is not None and len(attack):
    out["detection_at_dev_threshold"] = float(np.mean(attack < dev_threshold))
  return out


def calibrate(workdir: str, paths: Sequence[str], name: str, alpha: float = 0.05,
              delta: float | None = None, *, which: str = "best", align=None,
              unsure_error: float = 0.05, dev_split: str | None = None,
              overwrite: bool = False) -> dict[str, Any]:
  """Scores `paths` (bona fide images of one source) and stores calibration
  `name` in `workdir`. dev_split: the labelled split for the price and the
  band (default: the training config's val_split; "" to skip both).
  Returns the stored calibration (plus "path"); raises ValueError
  subclasses with a one-line message for the user's mistakes."""
  check_before_scoring(workdir, name, len(paths), alpha, delta, overwrite)
  from cmfl_jax.attribution import classes as attribution_classes
  from cmfl_jax.data import sources
  from cmfl_jax.evaluation import evaluate
  from cmfl_jax.scoring import files, model as scoring_model, rows
  model = scoring_model.load_model(workdir, which)
  geometry = files.input_geometry(model.config, None, align)
  scores, skipped = [], []
  for row in rows.scored_rows(model, paths, geometry, align):
    if "error" in row:
      skipped.append({"path": row["path"], "reason": row["error"]})
    elif row.get("unsupported"):
      skipped.append({"path": row["path"], "reason": f"unsure: {row['unsupported']}"})
    else:
      scores.append(row["score"])
  try:
    cut = conformal.threshold(np.asarray(scores), alpha, delta)
  except conformal.NotEnoughImages as e:
    raise conformal.NotEnoughImages(f"{e} ({len(skipped)} of {len(paths)} inputs could not "
                                    "be scored)" if skipped else str(e)) from None
  config = model.config
  dev_split = config.data.val_split if dev_split is None else dev_split
  band = price = None
  if dev_split:
    split = sources.load_splits(config.data, [dev_split])[0][dev_split]
    dev = evaluate.evaluate_split(model.eval_fn, model.state, split, model.mesh,
                                  data=config.data, batch_size=config.train.eval_batch_size,
                                  classes=attribution_classes.head_classes(config))["scores"]["joint"]
    band = selective.fit_band(split.labels, dev, cut["threshold"], unsure_error)
    price = {"split": dev_split, **dev_price(split.labels, dev, cut["threshold"], band,
                                              model.meta.get("dev_threshold"))}
  calibration = {**cut, "checkpoint": model.name, "images": len(paths),
                 "scored": len(scores), "skipped": skipped, "aligned_faces": bool(align),
                 "score_quantiles": np.quantile(scores, [0, 0.05, 0.5, 0.95, 1]).tolist(),
                 "dev": price, "band": band, "stability": list(stability.CONDITIONS),
                 binding.KEY: binding.fitted_on(model.meta, model.name, config.data.image_size,
                                                geometry.aligned, bool(align)),
                 "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                     timespec="seconds")}
  where = store.save(workdir, name, calibration, overwrite)
  return {**calibration, "path": where}
