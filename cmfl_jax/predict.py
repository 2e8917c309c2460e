"""Score new images with a trained model.

  python -m cmfl_jax.predict --workdir=DIR [--checkpoint=best|latest|STEP] [--unaligned] PATH...
  python -m cmfl_jax.predict --model=EXPORTED_DIR [--unaligned] PATH...

PATHs are image files or folders (searched recursively for PNG/JPEG/BMP/GIF).
With --align, raw photographs are detected and aligned first (the same code
as `python -m cmfl_jax.align`), one row per face with its box and score.
Prints CSV `path,score,verdict[,p_real_calibrated]` (score = P(real); verdict
from the dev-set EER threshold stored with the checkpoint, else 0.5 with a
warning; p_real_calibrated: P(real) after the Platt calibration fitted on the
dev set, where the checkpoint has one). Unreadable
files get an `error: ...` row and the rest are still scored; the exit status
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
from typing import Callable, Iterable, Iterator, Sequence

from cmfl_jax import backend

if __name__ == "__main__":  # before the imports below: they take seconds and would run twice
  backend.reexec_with_tuned_malloc()

# pylint: disable=wrong-import-position
import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from cmfl_jax import checkpointing, evaluate, stats, steps
from cmfl_jax import config as config_lib
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


def _file_rows(paths: Sequence[str], geometry: ops.Geometry, data_config,
               batch_size: int) -> Iterator[dict]:
  load = file_loader(geometry, data_config)
  for names, images, reasons in _file_batches(paths, load, batch_size):
    for path, image, reason in zip(names, images, reasons):
      yield {"path": path, "error": f"error: {reason}"} if reason else {"path": path,
                                                                         "image": image}


def aligned_faces(path: str, options, geometry: ops.Geometry) -> list[dict]:
  """Rows for the faces of one photograph (detected and aligned as
  `cmfl_jax.align` does), each with its model input; one "no face" row if none."""
  from cmfl_jax.data import align_files
  result = align_files.align_image(path, options)
  if not result:
    return [{"path": path, "error": f"no face: {result.reason}", "faces_found": 0}]
  rows = []
  for k, face in enumerate(result):
    rows.append({"path": path if len(result) == 1 else f"{path}#{k}",
                 "image": np.asarray(ops.resize_and_crop(tf.constant(face.crop), geometry)),
                 "face_box": " ".join(f"{v:.1f}" for v in face.box),
                 "face_score": face.score, "faces_found": face.faces_found})
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
        row["score"] = float(s)
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
  used), whether rows carry "calibrated", and the rows, produced lazily."""

  threshold: float | None
  calibrated: bool
  rows: Iterator[dict]


def _checkpoint_scorer(workdir: str, which: str, heads: bool = False,
                       batch_size: int | None = None):
  """(config, dev threshold, Platt calibration, score) of a checkpoint, scored
  in process; the eval step is compiled before this returns. With `heads`,
  score returns {head name: P(real)} (joint, and rgb/freq for two streams);
  `batch_size`: the padded shape (default: the config's eval batch size)."""
  config = config_from_checkpoint(workdir, which)
  state, eval_fn, mesh, meta, _ = evaluate.restore_for_eval(config, workdir, which)
  batch_size = batch_size or config.train.eval_batch_size
  sharding = steps.batch_sharding(mesh)
  image_shape = (config.data.image_size, config.data.image_size, 3)

  def score(images: np.ndarray) -> np.ndarray:
    n = len(images)  # a partial batch padded: one compilation
    batch = {"image": np.concatenate([images, np.zeros((batch_size - n, *image_shape), np.uint8)]),
             "label": np.zeros(batch_size, np.int32), "mask": np.arange(batch_size) < n}
    _, probs = eval_fn(state, jax.device_put(batch, sharding))
    if heads:
      return {k: np.asarray(v)[:n] for k, v in jax.device_get(probs).items()}
    return np.asarray(jax.device_get(probs["joint"]))[:n]

  score(np.zeros((0, *image_shape), np.uint8))  # compile now: images/s measures the stream
  return config, meta.get("dev_threshold"), meta.get("calibration"), score


_ARTIFACT_HEADS = {"joint": "p_real", "rgb": "p_real_rgb", "freq": "p_real_freq"}


def _artifact_scorer(model: str, heads: bool = False, batch_size: int | None = None):
  """The same from an exported model (`cmfl_jax.export`): its card's config,
  threshold and calibration, its `p_real` as the score (`heads`: the outputs
  of each head, named as for a checkpoint)."""
  from cmfl_jax.exporting import artifact
  loaded = artifact.load(model)
  config, card = loaded.config, loaded.card
  batch_size = batch_size or config.train.eval_batch_size
  image_shape = (config.data.image_size, config.data.image_size, 3)

  def score(images: np.ndarray) -> np.ndarray:
    n = len(images)  # padded to one batch shape: one compilation
    padded = np.concatenate([images, np.zeros((batch_size - n, *image_shape), np.uint8)])
    out = loaded.call(padded)
    if heads:
      return {head: out[name][:n] for head, name in _ARTIFACT_HEADS.items() if name in out}
    return out["p_real"][:n]

  score(np.zeros((0, *image_shape), np.uint8))
  threshold = card["thresholds"]["dev"] if card["thresholds"]["dev_stored"] else None
  return config, threshold, card["calibration"]["platt"], score


def predict(workdir: str | None, paths: Sequence[str], which: str = "best",
            aligned: bool | None = None, align=None, model: str | None = None) -> Predictions:
  """Rows {path, score, verdict | error[, calibrated]} in input order, streamed:
  files are checked and decoded by tf.data a few batches ahead and scored in
  fixed-size batches, so memory does not grow with the number of paths.
  With `align` (`AlignOptions`) every photograph is first detected and
  aligned; rows then carry the face box and detection score. Scores come from
  checkpoint `which` of `workdir`, or with `model` from an exported model
  directory. The model is compiled before this returns."""
  config, threshold, calibration, score = (_artifact_scorer(model) if model else
                                           _checkpoint_scorer(workdir, which))
  geometry = ops.Geometry(config.data.image_size,
                          True if align else config.data.aligned if aligned is None else aligned)
  batch_size = config.train.eval_batch_size
  cut = 0.5 if threshold is None else threshold

  def rows() -> Iterator[dict]:
    found = (_face_rows(paths, align, geometry) if align
             else _file_rows(paths, geometry, config.data, batch_size))
    for row in _scored(found, score, batch_size):
      if "score" in row:
        row["verdict"] = "bona fide" if row["score"] >= cut else "synthetic"
        if calibration:
          row["calibrated"] = float(stats.apply_calibration(
              calibration, evaluate.logits_of(np.asarray([row["score"]])))[0])
      yield row

  return Predictions(threshold, calibration is not None, rows())


def main(argv: Sequence[str]) -> int:
  paths = readers.collect_image_paths(argv[1:])
  if not paths:
    raise app.UsageError("give one or more image files or folders")
  aligned = None if FLAGS.unaligned is None else not FLAGS.unaligned
  align = None
  try:
    if FLAGS.align:
      from cmfl_jax.data import align_files
      align = align_files.AlignOptions(FLAGS.align_mode, FLAGS.align_policy, FLAGS.align_size)
    if (FLAGS.workdir is None) == (FLAGS.model is None):
      raise app.UsageError("give one of --workdir or --model")
    predictions = predict(FLAGS.workdir, paths, FLAGS.checkpoint, aligned, align, FLAGS.model)
  except (FileNotFoundError, checkpointing.CheckpointError, ImportError, ExportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  threshold, calibrated = predictions.threshold, predictions.calibrated
  if threshold is None:
    logging.warning("checkpoint has no stored dev threshold; verdicts use 0.5")
  if calibrated:
    logging.info("p_real_calibrated: P(real) after the Platt calibration fitted on the dev set "
                 "(same ranking as score; verdicts use the dev EER threshold on score)")
  w = csv.writer(sys.stdout)
  face_columns = ["face_box", "face_score", "faces_found"] if align else []
  w.writerow(["path", "score", "verdict", *(["p_real_calibrated"] if calibrated else []),
              *face_columns])
  scored = failed = 0
  start = time.perf_counter()
  for r in predictions.rows:
    faces = [r.get("face_box", ""), f"{r['face_score']:.4f}" if "face_score" in r else "",
             r.get("faces_found", "")] if align else []
    extra = ([f"{r['calibrated']:.6f}" if "calibrated" in r else ""] if calibrated else [])
    if "error" in r:
      w.writerow([r["path"], "", r["error"], *extra, *faces])
      failed += 1
    else:
      w.writerow([r["path"], f"{r['score']:.6f}", r["verdict"], *extra, *faces])
      scored += 1
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
  flags.DEFINE_bool("unaligned", None, "Apply the official unaligned geometry (resize 256, "
                    "centre crop); default: as in training (aligned inputs used as they are).")


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=config_lib.parse_flags)
