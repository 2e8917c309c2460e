"""Explain a trained model's decisions on image files.

  python -m cmfl_jax.explain --workdir=DIR [--checkpoint=best|latest|STEP] [--method=ig]
      [--sanity] --output=OUT PATH...

PATHs are image files or folders, as for `cmfl_jax.predict`. For every image
it writes `OUT/<path under the inputs' common folder, without extension>.npz`
(`rgb`: attribution of the joint logit to the input pixels through both
streams, `rgb_via_<stream>_stream`: its parts, `freq`: attribution over the
frequency stream's input, the fftshifted log spectrum, `spectrum`, `score_<head>`),
a `.png` picture beside it, and `OUT/explanations.csv` (one row per image;
broken files get an `error: ...` row and the rest are still explained; exit
status 1 if any failed). Methods: see `cmfl_jax/explanations/saliency.py`.
With --sanity each row also gets the randomisation rank correlation and the
deletion areas (`cmfl_jax/explanations/sanity.py`), and their means are printed.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from cmfl_jax import backend

if __name__ == "__main__":
  backend.reexec_with_tuned_malloc()

# pylint: disable=wrong-import-position
from absl import app, flags, logging

from cmfl_jax import config as config_lib
from cmfl_jax.data import readers
from cmfl_jax.explanations import saliency
from cmfl_jax.scoring import explain_files
from cmfl_jax.training import checkpointing

FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> int:
  paths = readers.collect_image_paths(argv[1:])
  if not paths:
    raise app.UsageError("give one or more image files or folders")
  if FLAGS.steps < 1 or FLAGS.batch_size < 1:
    raise app.UsageError("--steps and --batch_size must be >= 1")
  try:
    loaded = explain_files.load(FLAGS.workdir, FLAGS.checkpoint)
  except (FileNotFoundError, checkpointing.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  summary = explain_files.explain_to_folder(loaded, paths, FLAGS.output, FLAGS.method,
                                            FLAGS.steps, FLAGS.batch_size, FLAGS.sanity,
                                            FLAGS.pictures)
  print(json.dumps(summary))
  logging.info("wrote %s", os.path.join(FLAGS.output, "explanations.csv"))
  return 1 if summary["failed"] else 0


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.", required=True)
  flags.DEFINE_string("checkpoint", "best", "best | latest | STEP.")
  flags.DEFINE_string("output", None, "Folder for the .npz maps, pictures and CSV.",
                      required=True)
  flags.DEFINE_enum("method", "ig", list(saliency.METHODS),
                    "ig: integrated gradients from a blurred copy (default); ig_black: from a "
                    "black image; grad_input: gradient x input; gradcam: Grad-CAM of each "
                    "stream's last features.")
  flags.DEFINE_integer("steps", saliency.DEFAULT_STEPS, "Integrated-gradients path points.")
  flags.DEFINE_integer("batch_size", 8, "Images explained at once.")
  flags.DEFINE_bool("sanity", False, "Also run the sanity checks (weight randomisation, "
                    "deletion) and print their means.")
  flags.DEFINE_bool("pictures", True, "Write a PNG beside each .npz.")


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=config_lib.parse_flags)
