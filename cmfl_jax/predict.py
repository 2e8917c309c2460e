"""Score new images with a trained model.

  python -m cmfl_jax.predict --workdir=DIR [--checkpoint=best|latest|STEP] [--unaligned]
      [--calibration=NAME] [--stability=jpeg:95,resize:0.9] PATH...
  python -m cmfl_jax.predict --model=EXPORTED_DIR [--unaligned] [--stability=...] PATH...

PATHs are image files or folders (searched recursively for PNG/JPEG/BMP/GIF).
With --align, raw photographs are detected and aligned first (the same code
as `python -m cmfl_jax.align`), one row per face with its box and score.
Prints CSV `path,score,verdict,reason[,p_real_calibrated][,generator,
generator_confidence][,face columns],error` (score = P(real);
verdict real, synthetic or unsure, from the threshold of --calibration, else
the dev-set EER threshold stored with the checkpoint, else 0.5 with a
warning; unsure, with its reason, in the dev-fitted band around it, when the
verdict changes under --stability post-processing, or for a face too small
to judge; p_real_calibrated: P(real) after the Platt calibration fitted on
the dev set, where the checkpoint has one; generator: with the attribution
head, the class it names (bona_fide or a training generator) or `unknown`
when the open-set rule fitted on the dev set rejects every class, and the
softmax probability of its most likely class; reason: why, for every verdict,
e.g. `score 0.8123 >= threshold 0.4516`). A file that cannot be scored gets
a row with empty score and verdict and the cause in `error` ("not a readable
image (...)", "no face: ..."), and the rest are still scored; the exit status
is 1 if any file failed.

Rows are streamed: files are checked and decoded by tf.data in parallel, a
few batches ahead of the model, and printed as their batch is scored, so
memory does not depend on the number of files; the closing JSON log line
gives the throughput (images_per_sec, the model compiled beforehand).
Decoding is the eval pipeline's (TF's decoders, `ops.decode_image`), so the
scores are those `--mode=eval` gives for the same files; 8-bit PNG pixels
equal PIL's, JPEG pixels may differ slightly from PIL's libjpeg.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence, TextIO

from cmfl_jax import backend

if __name__ == "__main__":  # before the imports below: they take seconds and would run twice
  backend.reexec_with_tuned_malloc()

# pylint: disable=wrong-import-position
import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from cmfl_jax import checkpointing, evaluate, models, stats, steps
from cmfl_jax import config as config_lib
from cmfl_jax import verdicts
from cmfl_jax.attribution import classes as attribution_classes, openset
from cmfl_jax.data import ops, readers
from cmfl_jax.exporting.errors import ExportError

FLAGS = flags.FLAGS


def config_from_checkpoint(workdir: str, which: str) -> ml_collections.ConfigDict:
  """The training config stored (as JSON) in the checkpoint's metadata."""
  kind, step = checkpointing.select_step(workdir, which)
  meta = checkpointing.read_meta(checkpointing.make_managers(workdir)[kind], step)
  return ml_collections.ConfigDict(meta["config"])


def _read_checked(path: bytes, min_side: int, max_pixels: int) -> tuple[bytes, bytes]:
  """(file bytes, b"") or (b"", reason) for an `os.fsencode`d path: the header
  check of `readers.check_image_file` and `readers.truncation`, on the very bytes TF
  then decodes. Never raises."""
  name = os.fsdecode(path)
  reason = readers.check_image_file(name, min_side, max_pixels, full_decode=False)
  if reason is None:
    try:
      with open(name, "rb") as f:
        data = f.read()
    except OSError as e:
      return b"", f"unreadable file ({e})".encode()
    reason = readers.truncation(data)
    if reason is None:
      return data, b""
    reason = f"not a readable image ({reason})"
  return b"", reason.encode()


def file_loader(geometry: ops.Geometry, data_config
                ) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
  """TF function: path -> (model input, reason); a checked file is decoded
  and cropped as the eval pipeline does (`ops.decode_image`,
  `ops.resize_and_crop`: TF's decoders, so JPEG pixels can differ slightly
  from PIL's, while the scores are those `evaluate` gives), a file failing the
  checks gives zeros and its reason without being decoded."""
  min_side, max_pixels = readers.min_image_side(data_config), int(data_config.max_pixels)
  size = geometry.size

  def load(path):
    data, reason = tf.numpy_function(lambda p: _read_checked(p, min_side, max_pixels), [path],
                                     [tf.string, tf.string], stateful=False)
    data.set_shape([])
    reason.set_shape([])
    image = tf.cond(tf.equal(reason, ""),
                    lambda: ops.resize_and_crop(ops.decode_image(data), geometry),
                    lambda: tf.zeros([size, size, 3], tf.uint8))
    return tf.ensure_shape(image, [size, size, 3]), reason

  return tf.autograph.experimental.do_not_convert(load)


def _tf_reason(error: tf.errors.OpError) -> str:
  """TF's message without the graph and tf.data decorations."""
  message = re.sub(r"\{\{.*?\}\}", "", error.message).strip().split("\n")[0]
  message = re.sub(r"^Error in user-defined function .*? with iterator: \S+: ", "", message)
  return f"not a readable image (TF: {message.strip() or type(error).__name__})"


def _one_by_one(paths: Sequence[str], load: Callable) -> tuple[np.ndarray, list[str]]:
  """`load` of each path on its own: a decode error costs only its own file."""
  elements = tf.data.Dataset.from_tensor_slices([os.fsencode(p) for p in paths]).map(load)
  zeros = np.zeros(elements.element_spec[0].shape, np.uint8)
  images, reasons = [], []
  iterator = elements.as_numpy_iterator()
  for _ in paths:  # the iterator goes on after an element's error
    try:
      image, reason = next(iterator)
      reason = reason.decode()
    except tf.errors.OpError as e:
      image, reason = zeros, _tf_reason(e)
    images.append(image)
    reasons.append(reason)
  return np.stack(images), reasons


def _file_batches(paths: Sequence[str], load: Callable, batch_size: int
                  ) -> Iterator[tuple[Sequence[str], np.ndarray, list[str]]]:
  """(paths, images, reasons) of consecutive batches, in input order, from a
  tf.data pipeline (parallel, deterministic decode; a few batches ahead).
  A decode error the checks did not foresee fails a whole batch and shifts
  the next ones: that batch is then loaded one file at a time and the
  pipeline restarted after it."""
  start = 0
  while start < len(paths):
    batches = (tf.data.Dataset.from_tensor_slices([os.fsencode(p) for p in paths[start:]])
               .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(batch_size).prefetch(2).as_numpy_iterator())
    restart = False
    while start < len(paths) and not restart:
      try:
        images, reasons = next(batches)
        reasons = [r.decode() for r in reasons]
      except tf.errors.OpError:
        images, reasons = _one_by_one(paths[start:start + batch_size], load)
        restart = True
      yield paths[start:start + len(images)], images, reasons
      start += len(images)


def file_rows(paths: Sequence[str], geometry: ops.Geometry, data_config,
              batch_size: int) -> Iterator[dict]:
  """{path, image} or {path, error} per file, in order, streamed (`_file_batches`)."""
  load = file_loader(geometry, data_config)
  for names, images, reasons in _file_batches(paths, load, batch_size):
    for path, image, reason in zip(names, images, reasons):
      yield {"path": path, "error": f"error: {reason}"} if reason else {"path": path,
                                                                         "image": image}


def model_input(face, geometry: ops.Geometry) -> np.ndarray:
  """An aligned face's crop resized and cropped to the model's input."""
  return np.asarray(ops.resize_and_crop(tf.constant(face.crop), geometry))


def aligned_faces(path: str, options, geometry: ops.Geometry) -> list[dict]:
  """Rows for the faces of one photograph (detected and aligned as
  `cmfl_jax.align` does), each with its model input; one "no face" row if none.
  A face enlarged more than `options.max_upscale` times to the model's input
  carries "unsupported" (its verdict is unsure)."""
  from cmfl_jax.data import aligned_crops
  result = aligned_crops.align_image(path, options)
  if not result:
    return [{"path": path, "error": f"no face: {result.reason}", "faces_found": 0}]
  rows = []
  for k, face in enumerate(result):
    rows.append({"path": path if len(result) == 1 else f"{path}#{k}",
                 "image": model_input(face, geometry),
                 "face_box": " ".join(f"{v:.1f}" for v in face.box),
                 "face_score": face.score, "faces_found": face.faces_found,
                 "framing": face.framing,
                 "unsupported": aligned_crops.too_small(face, geometry.size, options.max_upscale)})
  return rows


def _face_rows(paths: Sequence[str], options, geometry: ops.Geometry) -> Iterator[dict]:
  for path in paths:
    try:
      yield from aligned_faces(path, options, geometry)
    except ImportError:
      raise
    except Exception as e:  # noqa: BLE001 - report every unreadable file, keep going
      yield {"path": path, "error": f"error: {e}"}


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


@dataclasses.dataclass
class Predictions:
  """What `predict` returns: the verdict threshold (None: none stored, 0.5
  used), whether rows carry "calibrated", the rows, produced lazily, the
  unsure band (None: none), the named calibration used (None: the dev
  threshold) and the attribution classes when rows carry "generator" and
  "generator_confidence" (empty: no attribution head)."""

  threshold: float | None
  calibrated: bool
  rows: Iterator[dict]
  band: dict | None = None
  calibration: str | None = None
  classes: tuple[str, ...] = ()


@dataclasses.dataclass
class Model:
  """A restored checkpoint or an exported model, compiled for one padded
  batch shape: `heads(uint8 images) -> {head: P(real)}` ("joint", and "rgb",
  "freq" for two streams; with the attribution head also the open-set
  decision `openset.INDEX` and `openset.CONFIDENCE`, and for a checkpoint its
  logits `models.SOURCE`); `classes` names the decided indices (empty: no
  attribution head); `state`, `eval_fn` and `mesh` for a checkpoint only."""

  config: ml_collections.ConfigDict
  meta: dict
  name: str
  heads: Callable[[np.ndarray], dict[str, np.ndarray]]
  state: Any = None
  eval_fn: Callable | None = None
  mesh: Any = None
  classes: tuple[str, ...] = ()

  def score(self, images: np.ndarray) -> np.ndarray:
    """The joint head's P(real)."""
    return self.heads(images)["joint"]


#: `Model.heads` entries that are not a P(real) head.
ATTRIBUTION_OUTPUTS = (models.SOURCE, openset.INDEX, openset.CONFIDENCE)


def p_real_heads(heads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The P(real) heads of `Model.heads`' answer."""
  return {k: v for k, v in heads.items() if k not in ATTRIBUTION_OUTPUTS}


def batch_shapes(largest: int, unit: int = 1) -> tuple[int, ...]:
  """The compiled batch sizes of a service: `unit` (the images of one
  request: 1 + its stability variants), 8x, 64x that, ... below `largest`,
  and `largest`. A lone request waits for its own forward pass, a full
  queue gets the largest batch, padding wastes at most 8x. Few sizes: each
  costs a trace at start-up, even with a warm compilation cache."""
  sizes, k = [], max(1, min(unit, largest))
  while k < largest:
    sizes.append(k)
    k *= 8
  return (*sizes, largest)


def padded_batches(call: Callable[[np.ndarray], dict[str, np.ndarray]],
                   batch_size: int | Sequence[int], size: int
                   ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """`call` on fixed-size batches: chunks of the largest size, the last one
  zero-padded to the smallest size that holds it (one compilation per size,
  all done before this returns, so that images/s measures the stream)."""
  sizes = sorted({batch_size} if isinstance(batch_size, int) else set(batch_size))
  largest = sizes[-1]

  def heads(images: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for start in range(0, max(len(images), 1), largest):
      chunk = images[start:start + largest]
      n = len(chunk)
      shape = next(s for s in sizes if s >= n)
      batch = np.concatenate([chunk, np.zeros((shape - n, size, size, 3), np.uint8)])
      for head, p in call(batch).items():
        out.setdefault(head, []).append(np.asarray(p)[:n])
    return {head: np.concatenate(parts) for head, parts in out.items()}

  for shape in sizes:
    call(np.zeros((shape, size, size, 3), np.uint8))
  return heads


def load_model(workdir: str, which: str = "best", batch_size: int | None = None,
               shapes: Sequence[int] = ()) -> Model:
  """Restores and compiles checkpoint `which` for batches of `batch_size`
  (default: the config's eval batch size) and of the smaller `shapes`."""
  config = config_from_checkpoint(workdir, which)
  state, eval_fn, mesh, meta, name = evaluate.restore_for_eval(config, workdir, which)
  batch_size = batch_size or config.train.eval_batch_size
  sharding = steps.batch_sharding(mesh)
  # The open-set rule fitted on the dev split decides, as evaluation decides.
  fitted = meta.get("attribution") if attribution_classes.num_sources(config) else None

  def call(images: np.ndarray) -> dict[str, np.ndarray]:
    batch = {"image": images, "label": np.zeros(len(images), np.int32),
             "mask": np.ones(len(images), bool)}
    _, probs = eval_fn(state, jax.device_put(batch, sharding))
    heads = jax.device_get(probs)
    if fitted:
      heads[openset.INDEX], heads[openset.CONFIDENCE] = openset.decide(heads[models.SOURCE],
                                                                       fitted)
    return heads

  return Model(config, meta, name, padded_batches(call, (*shapes, batch_size),
                                                  config.data.image_size),
               state, eval_fn, mesh, tuple(fitted["classes"]) if fitted else ())


#: Export output -> `Model.heads` entry.
_ARTIFACT_HEADS = {"p_real": "joint", "p_real_rgb": "rgb", "p_real_freq": "freq",
                   openset.INDEX: openset.INDEX, openset.CONFIDENCE: openset.CONFIDENCE}


def load_exported(directory: str, batch_size: int | None = None,
                  shapes: Sequence[int] = ()) -> Model:
  """An exported model (`cmfl_jax.export`): its card's config, thresholds and
  calibrations; its P(real) outputs as the heads, and the generator it
  decided where it has the attribution head."""
  from cmfl_jax.exporting import artifact
  loaded = artifact.load(directory)
  card = loaded.card
  chosen = card["calibration"]["chosen"]
  meta = {"dev_threshold": card["thresholds"]["dev"] if card["thresholds"]["dev_stored"] else None,
          "calibration": card["calibration"]["platt"],
          "unsure_band": card.get("unsure_band"),
          "chosen_calibration": chosen and {**chosen["record"], "threshold": chosen["threshold"]},
          "card": card}
  if card.get("attribution"):
    meta["attribution"] = card["attribution"]
  config = loaded.config

  def call(images: np.ndarray) -> dict[str, np.ndarray]:
    return {head: v for k, v in loaded.call(images).items()
            if (head := _ARTIFACT_HEADS.get(k))}

  return Model(config, meta, f"{card['checkpoint']['kind']}_{card['checkpoint']['step']}",
               padded_batches(call, (*shapes, batch_size or config.train.eval_batch_size),
                              config.data.image_size),
               classes=tuple(meta.get("attribution", {}).get("classes", ())))


def input_geometry(config: ml_collections.ConfigDict, aligned: bool | None = None,
                   align=None) -> ops.Geometry:
  """The model's input crop: aligned faces with `align`, else as trained
  unless `aligned` says otherwise."""
  return ops.Geometry(config.data.image_size,
                      True if align else config.data.aligned if aligned is None else aligned)


def scored_rows(model: Model, paths: Sequence[str], geometry: ops.Geometry, align=None,
                score: Callable | None = None) -> Iterator[dict]:
  """Rows {path, score | error, ...} in input order, streamed (see `predict`);
  `score` (default `model.score`) may return a dict per image instead."""
  batch_size = model.config.train.eval_batch_size
  found = (_face_rows(paths, align, geometry) if align
           else file_rows(paths, geometry, model.config.data, batch_size))
  yield from _scored(found, score or model.score, batch_size)


def predict(workdir: str | None, paths: Sequence[str], which: str = "best",
            aligned: bool | None = None, align=None, calibration: str | None = None,
            stability: Sequence[str] = (), model: str | None = None) -> Predictions:
  """Rows {path, score, verdict, reason | error[, calibrated][, generator,
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
  from cmfl_jax.verdicts import stability as stability_lib
  stability = stability_lib.check_conditions(stability)
  if model and calibration:
    raise ValueError("--calibration applies to a --workdir checkpoint; an exported model "
                     "carries the calibration chosen when it was exported")
  chosen = verdicts.load_calibration(workdir, calibration) if calibration else None
  loaded = load_exported(model) if model else load_model(workdir, which)
  config, meta = loaded.config, loaded.meta
  threshold, band, _ = verdicts.rule(meta, chosen, calibration)
  platt = meta.get("calibration")
  geometry = input_geometry(config, aligned, align)
  cut = 0.5 if threshold is None else threshold

  def score(images: np.ndarray) -> list[dict]:
    heads = loaded.heads(images)
    main = heads["joint"]
    under = stability_lib.scores_under(images, loaded.score, stability)
    named = openset.answers(heads, loaded.classes, len(main))
    return [{"score": float(s), "under": {c: float(v[i]) for c, v in under.items()}, **named[i]}
            for i, s in enumerate(main)]

  def rows() -> Iterator[dict]:
    for row in scored_rows(loaded, paths, geometry, align, score):
      if "score" in row:
        unstable = stability_lib.unstable(row["score"], row.pop("under"), cut)
        row["verdict"], row["reason"] = verdicts.decide(row["score"], cut, band, unstable,
                                                        row.get("unsupported"))
        if platt:
          row["calibrated"] = float(stats.apply_calibration(
              platt, evaluate.logits_of(np.asarray([row["score"]])))[0])
      yield row

  return Predictions(threshold, platt is not None, rows(), band, calibration, loaded.classes)


def write_csv(predictions: Predictions, align: bool, out: TextIO) -> tuple[int, int]:
  """predict's CSV of `predictions` (columns as the module docstring lists,
  the optional ones only where rows carry them) written to `out` as rows
  come; (scored, failed) counts."""
  w = csv.writer(out)
  calibrated = predictions.calibrated
  face_columns = ["face_box", "face_score", "faces_found", "framing"] if align else []
  generator_columns = [openset.GENERATOR, openset.CONFIDENCE] if predictions.classes else []
  w.writerow(["path", "score", "verdict", "reason",
              *(["p_real_calibrated"] if calibrated else []), *generator_columns, *face_columns,
              "error"])
  scored = failed = 0
  for r in predictions.rows:
    faces = [r.get("face_box", ""), f"{r['face_score']:.4f}" if "face_score" in r else "",
             r.get("faces_found", ""), r.get("framing", "")] if align else []
    extra = ([f"{r['calibrated']:.6f}" if "calibrated" in r else ""] if calibrated else [])
    extra += ([r.get(openset.GENERATOR, ""), f"{r[openset.CONFIDENCE]:.6f}"
               if openset.CONFIDENCE in r else ""] if generator_columns else [])
    if "error" in r:  # no verdict: the file could not be scored, and why
      w.writerow([r["path"], "", "", "", *extra, *faces, r["error"].removeprefix("error: ")])
      failed += 1
    else:
      w.writerow([r["path"], f"{r['score']:.6f}", r["verdict"], r["reason"], *extra, *faces, ""])
      scored += 1
  return scored, failed


def main(argv: Sequence[str]) -> int:
  paths = readers.collect_image_paths(argv[1:])
  if not paths:
    raise app.UsageError("give one or more image files or folders")
  aligned = None if FLAGS.unaligned is None else not FLAGS.unaligned
  align = None
  try:
    if FLAGS.align:
      from cmfl_jax.data import aligned_crops
      align = aligned_crops.AlignOptions(FLAGS.align_mode, FLAGS.align_policy, FLAGS.align_size,
                                         max_upscale=FLAGS.max_upscale)
    if (FLAGS.workdir is None) == (FLAGS.model is None):
      raise app.UsageError("give one of --workdir or --model")
    predictions = predict(FLAGS.workdir, paths, FLAGS.checkpoint, aligned, align,
                          FLAGS.calibration, FLAGS.stability, FLAGS.model)
  except (FileNotFoundError, checkpointing.CheckpointError, ImportError, ExportError,
          ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  threshold, calibrated = predictions.threshold, predictions.calibrated
  if predictions.calibration:
    logging.info("verdicts use calibration %r: threshold %.6f", predictions.calibration,
                 threshold)
  elif threshold is None:
    logging.warning("checkpoint has no stored dev threshold; verdicts use 0.5")
  if calibrated:
    logging.info("p_real_calibrated: P(real) after the Platt calibration fitted on the dev set "
                 "(same ranking as score; verdicts use the threshold on score)")
  if predictions.classes:
    logging.info("generator: one of %s, or %r where the open-set rule fitted on the dev set "
                 "rejects them all; generator_confidence: softmax probability of the most "
                 "likely class", list(predictions.classes), openset.UNKNOWN)
  start = time.perf_counter()
  scored, failed = write_csv(predictions, bool(align), sys.stdout)
  sys.stdout.flush()
  seconds = time.perf_counter() - start
  logging.info("%s", json.dumps({"scored": scored, "failed": failed, "threshold": threshold,
                                 "seconds": round(seconds, 3),
                                 "images_per_sec": round(scored / max(seconds, 1e-9), 1)}))
  return 1 if failed else 0


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.")
  flags.DEFINE_string("checkpoint", "best", "best | latest | STEP.")
  flags.DEFINE_string("model", None, "Score with an exported model (python -m cmfl_jax.export "
                      "--output=DIR) instead of a --workdir checkpoint.")
  flags.DEFINE_bool("align", False, "Detect and align each photograph first (MTCNN, as "
                    "`python -m cmfl_jax.align`; needs the align extra); one row per face, "
                    "'no face: <reason>' rows for photographs without one.")
  flags.DEFINE_enum("align_mode", "align", ["align", "box"], "--align: crop kind.")
  flags.DEFINE_enum("align_policy", "largest", ["largest", "most_confident", "all",
                                                "skip_multiple"], "--align: which faces.")
  flags.DEFINE_integer("align_size", 224, "--align: crop size before the model's resize "
                       "(the size the training data was aligned at).")
  flags.DEFINE_float("max_upscale", 2.0, "--align: a face enlarged more than this to the "
                     "model's input gets 'unsure: face too small (N px)'.")
  flags.DEFINE_string("calibration", None, "A calibration made by `python -m cmfl_jax.calibrate"
                      " --name=NAME`: its threshold (guaranteed false-alarm rate on the images "
                      "it was made from) and unsure band decide the verdicts.")
  flags.DEFINE_list("stability", list(verdicts.STABILITY), "Post-processing each image is "
                    "also scored under; a verdict that changes is 'unsure' (the service's "
                    "default too). Empty: off.")
  flags.DEFINE_bool("unaligned", None, "Apply the official unaligned geometry (resize 256, "
                    "centre crop); default: as in training (aligned inputs used as they are).")


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=config_lib.parse_flags)
