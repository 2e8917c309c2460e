"""Score new images with a trained model.

  python -m cmfl_jax.predict --workdir=DIR [--checkpoint=best|latest|STEP] [--unaligned] PATH...

PATHs are image files or folders (searched recursively for PNG/JPEG/BMP/GIF).
With --align, raw photographs are detected and aligned first (the same code
as `python -m cmfl_jax.align`), one row per face with its box and score.
Prints CSV `path,score,verdict[,p_real_calibrated]` (score = P(real); verdict
from the dev-set EER threshold stored with the checkpoint, else 0.5 with a
warning; p_real_calibrated: P(real) after the Platt calibration fitted on the
dev set, where the checkpoint has one). Unreadable
files get an `error: ...` row and the rest are still scored; the exit status
is 1 if any file failed.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from PIL import Image

from cmfl_jax import backend, checkpointing, evaluate, stats, steps
from cmfl_jax import config as config_lib
from cmfl_jax.data import ops, readers

FLAGS = flags.FLAGS


def config_from_checkpoint(workdir: str, which: str) -> ml_collections.ConfigDict:
  """The training config stored (as JSON) in the checkpoint's metadata."""
  kind, step = checkpointing.select_step(workdir, which)
  meta = checkpointing.read_meta(checkpointing.make_managers(workdir)[kind], step)
  return ml_collections.ConfigDict(meta["config"])


def load_image(path: str, geometry: ops.Geometry, data_config) -> np.ndarray:
  """Evaluation preprocessing of one file; raises ValueError with the reason."""
  reason = readers.check_image_file(path, readers.min_image_side(data_config),
                                    data_config.max_pixels, full_decode=True)
  if reason is not None:
    raise ValueError(reason)
  with Image.open(path) as im:
    pixels = readers.pil_to_rgb8(im)
  return np.asarray(ops.resize_and_crop(tf.constant(pixels), geometry))


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


def predict(workdir: str, paths: Sequence[str], which: str = "best",
            aligned: bool | None = None, align=None) -> tuple[list[dict], float | None]:
  """Rows {path, score, verdict | error[, calibrated]} in input order, the
  threshold used and whether a calibration was stored with the checkpoint.
  With `align` (`AlignOptions`) every photograph is first detected and
  aligned; rows then carry the face box and detection score."""
  config = config_from_checkpoint(workdir, which)
  state, eval_fn, mesh, meta, _ = evaluate.restore_for_eval(config, workdir, which)
  threshold = meta.get("dev_threshold")
  geometry = ops.Geometry(config.data.image_size,
                          True if align else config.data.aligned if aligned is None else aligned)
  rows, images, ok_rows = [], [], []
  for path in paths:
    try:
      found = (aligned_faces(path, align, geometry) if align
               else [{"path": path, "image": load_image(path, geometry, config.data)}])
    except ImportError:
      raise
    except Exception as e:  # noqa: BLE001 - report every unreadable file, keep going
      found = [{"path": path, "error": f"error: {e}"}]
    for row in found:
      if "image" in row:
        images.append(row.pop("image"))
        ok_rows.append(len(rows))
      rows.append(row)
  batch_size = config.train.eval_batch_size
  sharding = steps.batch_sharding(mesh)
  scores = []
  for start in range(0, len(images), batch_size):
    chunk = np.stack(images[start:start + batch_size])
    n = len(chunk)
    pad = batch_size - n  # fixed shape: one compilation
    batch = {"image": np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.uint8)]),
             "label": np.zeros(batch_size, np.int32), "mask": np.arange(batch_size) < n}
    batch = {k: jax.device_put(v, sharding) for k, v in batch.items()}
    _, probs = eval_fn(state, batch)
    scores.append(np.asarray(jax.device_get(probs["joint"]))[:n])
  cut = 0.5 if threshold is None else threshold
  calibration = meta.get("calibration")
  for i, score in zip(ok_rows, np.concatenate(scores) if scores else []):
    rows[i]["score"] = float(score)
    rows[i]["verdict"] = "bona fide" if score >= cut else "synthetic"
    if calibration:
      rows[i]["calibrated"] = float(stats.apply_calibration(
          calibration, evaluate.logits_of(np.asarray([score])))[0])
  return rows, threshold, calibration is not None


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
    rows, threshold, calibrated = predict(FLAGS.workdir, paths, FLAGS.checkpoint, aligned,
                                          align)
  except (FileNotFoundError, checkpointing.CheckpointError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if threshold is None:
    logging.warning("checkpoint has no stored dev threshold; verdicts use 0.5")
  if calibrated:
    logging.info("p_real_calibrated: P(real) after the Platt calibration fitted on the dev set "
                 "(same ranking as score; verdicts use the dev EER threshold on score)")
  w = csv.writer(sys.stdout)
  face_columns = ["face_box", "face_score", "faces_found"] if align else []
  w.writerow(["path", "score", "verdict", *(["p_real_calibrated"] if calibrated else []),
              *face_columns])
  for r in rows:
    faces = [r.get("face_box", ""), f"{r['face_score']:.4f}" if "face_score" in r else "",
             r.get("faces_found", "")] if align else []
    extra = ([f"{r['calibrated']:.6f}" if "calibrated" in r else ""] if calibrated else [])
    if "error" in r:
      w.writerow([r["path"], "", r["error"], *extra, *faces])
    else:
      w.writerow([r["path"], f"{r['score']:.6f}", r["verdict"], *extra, *faces])
  sys.stdout.flush()
  failed = sum("error" in r for r in rows)
  logging.info("%s", json.dumps({"scored": len(rows) - failed, "failed": failed,
                                 "threshold": threshold}))
  return 1 if failed else 0


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.", required=True)
  flags.DEFINE_string("checkpoint", "best", "best | latest | STEP.")
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
  backend.reexec_with_tuned_malloc()
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=config_lib.parse_flags)
