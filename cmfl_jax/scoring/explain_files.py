"""Explain files with a trained model: `.npz` maps, a picture and a CSV row
per image, streamed (scoring.files' loader: tf.data decodes a few batches ahead,
broken files become error rows), so memory does not grow with the number of
files. `cmfl_jax.explain` is the command."""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import time
from typing import Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from cmfl_jax import verdicts
from cmfl_jax.data import ops
from cmfl_jax.evaluation import evaluate
from cmfl_jax.explanations import pictures, saliency, sanity, streams
from cmfl_jax.scoring import files, model as scoring_model
from cmfl_jax.training import steps
from cmfl_jax.verdicts import stability as stability_lib

HEADS = ("joint", "rgb", "freq")
VERDICT_WORDS = {"real": "Real face", "synthetic": "Synthetic face", "unsure": "Unsure"}
#: Per-image sanity numbers (--sanity), see `sanity`.
SANITY_COLUMNS = ("randomisation_rank_corr_rgb", "randomisation_rank_corr_freq",
                  "randomisation_signed_rank_corr_rgb", "randomisation_signed_rank_corr_freq",
                  "deletion_area_rgb", "deletion_area_freq")


@dataclasses.dataclass
class Loaded:
  """A checkpoint's model (eval mode) with what the outputs record."""

  model: streams.Model
  model_config: object
  config: object
  step: int
  rule: tuple = (None, None, "default_0.5")  # `verdicts.rule` of the checkpoint's metadata


def load(workdir: str, which: str = "best") -> Loaded:
  """The model of checkpoint `which` (best | latest | STEP) of `workdir`;
  nothing but arrays and JSON is read (Orbax)."""
  config = scoring_model.config_from_checkpoint(workdir, which)
  state, _, mesh, meta, _ = evaluate.restore_for_eval(config, workdir, which)
  return dataclasses.replace(from_state(config, state, mesh, int(meta["step"])),
                             rule=verdicts.rule(meta))


def from_state(config, state: steps.TrainState, mesh, step: int) -> Loaded:
  """The model (eval mode) of an already restored state, e.g. `scoring.model.load_model`'s."""
  _, programs = steps.create_train_state(config, mesh, abstract=True)
  model = nnx.merge(programs.eval_graphdef, state.params, state.batch_stats)
  return Loaded(model, programs.model, config, step)


def output_names(paths: Sequence[str]) -> list[str]:
  """Each path under the inputs' common folder, without its extension (the
  extension kept, as `_png`, where two inputs would share a name)."""
  full = [os.path.abspath(p) for p in paths]
  root = os.path.commonpath([os.path.dirname(p) for p in full]) if full else ""
  stems = [os.path.splitext(os.path.relpath(p, root))[0] for p in full]
  taken = collections.Counter(stems)
  return [s if taken[s] == 1 else s + "_" + os.path.splitext(p)[1].lstrip(".")
          for s, p in zip(stems, full)]


def _batched(rows: Iterator[dict], batch_size: int) -> Iterator[list[dict]]:
  """Rows in input order, grouped so each group holds at most `batch_size` images."""
  pending, waiting = [], 0
  for row in rows:
    pending.append(row)
    waiting += "image" in row
    if waiting == batch_size:
      yield pending
      pending, waiting = [], 0
  if pending:
    yield pending


def explain_files(loaded: Loaded, paths: Sequence[str], out_dir: str, method: str = "ig",
                  ig_steps: int = saliency.DEFAULT_STEPS, batch_size: int = 8,
                  check_sanity: bool = False, pictures_too: bool = True) -> Iterator[dict]:
  """CSV rows (dicts), one per path in order, after writing its outputs."""
  config = loaded.config
  geometry = ops.Geometry(config.data.image_size, config.data.aligned)
  run = saliency.compile_method(loaded.model, method, ig_steps)
  if check_sanity:
    random_run = saliency.compile_method(
        sanity.reinitialised(loaded.model_config, config.seed + 1), method, ig_steps)
    evidence = sanity.evidence_programs(loaded.model)
  names = dict(zip(paths, output_names(paths)))
  shape = (geometry.size, geometry.size, 3)
  joint = _joint_scorer(loaded.model)
  threshold, band, _ = loaded.rule
  cut = 0.5 if threshold is None else threshold
  rows = files.file_rows(paths, geometry, config.data, batch_size)
  scale = None  # the pictures' colour and axis scales, fixed by the first batch
  for group in _batched(rows, batch_size):
    good = [r for r in group if "image" in r]
    position = {id(r): i for i, r in enumerate(good)}
    if good:
      images = np.stack([r["image"] for r in good])
      padded = np.concatenate([images, np.zeros((batch_size - len(good), *shape), np.uint8)])
      maps = {k: np.asarray(v)[:len(good)] for k, v in jax.device_get(run(padded)).items()}
      scale = scale or pictures.run_scale({k: maps[k] for k in ("rgb", "freq") if k in maps})
      if check_sanity:
        checks = _sanity(loaded.model, padded, maps, random_run, evidence, len(good))
      under = stability_lib.scores_under(images, joint, verdicts.STABILITY)
    for row in group:
      out = {"path": row["path"], "method": method, "checkpoint_step": loaded.step}
      if "error" in row:
        yield {**out, "error": row["error"]}
        continue
      i = position[id(row)]
      one = {k: v[i] for k, v in maps.items()}
      scores = {h: float(one.pop(f"score_{h}")) for h in HEADS if f"score_{h}" in one}
      target = os.path.join(out_dir, names[row["path"]])
      os.makedirs(os.path.dirname(target), exist_ok=True)
      np.savez_compressed(target + ".npz", **one, **{f"score_{h}": s for h, s in scores.items()},
                          method=method, checkpoint_step=loaded.step)
      # predict's rule with predict's default stability check
      unstable = stability_lib.unstable(scores["joint"], {c: float(v[i]) for c, v in
                                                          under.items()}, cut)
      verdict, _ = verdicts.decide(scores["joint"], cut, band, unstable)
      if pictures_too:
        pictures.explanation_figure(row["image"], one, scores, target + ".png",
                                    os.path.basename(row["path"]), VERDICT_WORDS[verdict], scale)
      out.update({f"score_{h}": s for h, s in scores.items()}, verdict=verdict,
                 output=target + ".npz")
      if check_sanity:
        out.update({k: float(v[i]) for k, v in checks.items()})
      yield out


def _joint_scorer(model: streams.Model):
  """uint8 images -> the joint head's P(real), jit-compiled."""
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda state, x: jax.nn.sigmoid(nnx.merge(graphdef, state)(x)["joint"]))
  return lambda images: np.asarray(run(state, images))


def _sanity(model, padded, maps, random_run, evidence, n) -> dict[str, np.ndarray]:
  random_maps = jax.device_get(random_run(padded))
  out = {}
  for key in ("rgb", "freq"):
    if key in maps:
      for kind, signed in (("", False), ("signed_", True)):
        out[f"randomisation_{kind}rank_corr_{key}"] = sanity.rank_correlation(
            maps[key], np.asarray(random_maps[key])[:n], signed)
  curves = sanity.deletion(model, padded[:n], maps, programs=evidence)
  out.update({f"deletion_area_{k}": curves[f"{k}_area"] for k in ("rgb", "freq")
              if f"{k}_area" in curves})
  return out


def write_csv(rows: Iterator[dict], path: str) -> Iterator[dict]:
  """Writes `rows` to `path` as they come (header from the first row's keys
  plus the error column) and passes them on."""
  columns = ["path", "output", *[f"score_{h}" for h in HEADS], "verdict", "method",
             "checkpoint_step",
             *SANITY_COLUMNS,
             "error"]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
      f.flush()
      yield row


def explain_to_folder(loaded: Loaded, paths: Sequence[str], out_dir: str, method: str = "ig",
                      ig_steps: int = saliency.DEFAULT_STEPS, batch_size: int = 8,
                      check_sanity: bool = False, pictures_too: bool = True) -> dict:
  """`explain_files` into `out_dir` with its explanations.csv; returns the
  counts, seconds and the means of the sanity numbers (running sums only)."""
  os.makedirs(out_dir, exist_ok=True)
  start = time.perf_counter()
  rows = write_csv(explain_files(loaded, paths, out_dir, method, ig_steps, batch_size,
                                 check_sanity, pictures_too),
                   os.path.join(out_dir, "explanations.csv"))
  count, failed, sums = 0, 0, {}
  for row in rows:
    count += 1
    failed += "error" in row
    for key in SANITY_COLUMNS:
      if key in row:
        total, n = sums.get(key, (0.0, 0))
        sums[key] = (total + row[key], n + 1)
  summary = {"explained": count - failed, "failed": failed, "method": method,
             "seconds": round(time.perf_counter() - start, 3)}
  summary.update({f"mean_{k}": round(total / n, 4) for k, (total, n) in sums.items()})
  return summary
