"""Score new images with a trained model.

  python -m cmfl_jax.predict --workdir=DIR [--checkpoint=best|latest|STEP] [--unaligned]
      [--calibration=NAME] [--stability=jpeg:95,resize:0.9] PATH...
  python -m cmfl_jax.predict --model=EXPORTED_DIR [--unaligned] [--stability=...] PATH...

PATHs are image files or folders (searched recursively for PNG/JPEG/BMP/GIF).
With --align, raw photographs are detected and aligned first (the same code
as `python -m cmfl_jax.align`), one row per face with its box and score.
Prints CSV `path,score,verdict,reason[,p_real_platt][,generator,
generator_confidence][,face columns],error` (score = P(real);
verdict real, synthetic or unsure, from the threshold of --calibration, else
the dev-set EER threshold stored with the checkpoint, else 0.5 with a
warning; unsure, with its reason, in the dev-fitted band around it, when the
verdict changes under --stability post-processing, or for a face too small
to judge; p_real_platt: P(real) after the Platt scaling fitted on
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
import json
import sys
import time
from typing import Sequence, TextIO

from cmfl_jax import backend

if __name__ == "__main__":  # before the imports below: they take seconds and would run twice
  backend.reexec_with_tuned_malloc()

# pylint: disable=wrong-import-position
from absl import app, flags, logging

from cmfl_jax import config as config_lib
from cmfl_jax import verdicts
from cmfl_jax.attribution import openset
from cmfl_jax.data import readers
from cmfl_jax.exporting.errors import ExportError
from cmfl_jax.scoring.decisions import Predictions, predict
from cmfl_jax.training import checkpointing

FLAGS = flags.FLAGS


def write_csv(predictions: Predictions, align: bool, out: TextIO) -> tuple[int, int]:
  """predict's CSV of `predictions` (columns as the module docstring lists,
  the optional ones only where rows carry them) written to `out` as rows
  come; (scored, failed) counts."""
  w = csv.writer(out)
  platt = predictions.platt
  face_columns = ["face_box", "face_score", "faces_found", "framing"] if align else []
  generator_columns = [openset.GENERATOR, openset.CONFIDENCE] if predictions.classes else []
  w.writerow(["path", "score", "verdict", "reason",
              *(["p_real_platt"] if platt else []), *generator_columns, *face_columns,
              "error"])
  scored = failed = 0
  for r in predictions.rows:
    faces = [r.get("face_box", ""), f"{r['face_score']:.4f}" if "face_score" in r else "",
             r.get("faces_found", ""), r.get("framing", "")] if align else []
    extra = ([f"{r['platt']:.6f}" if "platt" in r else ""] if platt else [])
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
  threshold, platt = predictions.threshold, predictions.platt
  if predictions.calibration:
    logging.info("verdicts use calibration %r: threshold %.6f", predictions.calibration,
                 threshold)
  elif threshold is None:
    logging.warning("checkpoint has no stored dev threshold; verdicts use 0.5")
  if platt:
    logging.info("p_real_platt: P(real) after the Platt scaling fitted on the dev set "
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
  flags.DEFINE_enum("align_policy", "all", ["largest", "most_confident", "all",
                                            "skip_multiple"], "--align: which faces (default: "
                    "every face found, a row each, as the service answers them).")
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
