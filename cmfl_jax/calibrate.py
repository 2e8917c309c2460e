"""Calibrate verdicts on your own bona fide images.

  python -m cmfl_jax.calibrate --workdir=DIR --real=PATH [--real=PATH...] --name=NAME
      [--false_alarm=0.05] [--confidence=0.9] [--align] [--unsure_error=0.05] [--overwrite]

PATHs are bona fide images (files or folders) from the source the model will
judge (one camera, one phone, one archive). The threshold is the k-th
smallest of their scores, chosen so that a new bona fide image from the same
source is called synthetic with probability <= --false_alarm (marginal,
split conformal), or, with --confidence=C, so that the false-alarm rate
itself is <= --false_alarm with probability >= C over the calibration images.
It is stored as `DIR/calibrations/NAME.json` (never replaced without
--overwrite) with the unsure band fitted around it on the dev split, and
printed with its price: the share of the dev split's attacks it still
detects. Use it with `python -m cmfl_jax.predict --calibration=NAME`.
"""

from __future__ import annotations

import sys
from typing import Sequence

from cmfl_jax import backend

if __name__ == "__main__":  # before the imports below: they take seconds and would run twice
  backend.reexec_with_tuned_malloc()

# pylint: disable=wrong-import-position
from absl import app, flags

from cmfl_jax import config as config_lib
from cmfl_jax.data import readers
from cmfl_jax.training import checkpointing

FLAGS = flags.FLAGS


def _pct(value: float | None) -> str:
  return "n/a" if value is None else f"{100 * value:.1f} %"


def main(argv: Sequence[str]) -> int:
  from cmfl_jax.verdicts import calibration
  inputs = [*FLAGS.real, *argv[1:]]
  if not inputs:
    print("error: give bona fide images with --real=PATH (files or folders)", file=sys.stderr)
    return config_lib.USAGE_ERROR
  paths = readers.collect_image_paths(inputs)
  delta = None if FLAGS.confidence is None else 1.0 - FLAGS.confidence
  try:
    align = None
    if FLAGS.align:
      from cmfl_jax.data import aligned_crops
      align = aligned_crops.AlignOptions(max_upscale=FLAGS.max_upscale)
    out = calibration.calibrate(FLAGS.workdir, paths, FLAGS.name, FLAGS.false_alarm, delta,
                                which=FLAGS.checkpoint, align=align,
                                unsure_error=FLAGS.unsure_error, dev_split=FLAGS.dev_split,
                                overwrite=FLAGS.overwrite)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return config_lib.USAGE_ERROR
  except (FileNotFoundError, checkpointing.CheckpointError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for s in out["skipped"]:
    print(f"skipped: {s['path']}: {s['reason']}", file=sys.stderr)
  print(f"calibration {FLAGS.name!r}: threshold {out['threshold']:.6f} (P(real) below it is "
        f"synthetic), the {out['k']}-th smallest of {out['n']} bona fide scores")
  print(f"guarantee: {out['guarantee']}")
  dev = out["dev"]
  if dev:
    print(f"price on {dev['split']}: detects {_pct(dev['detection'])} of its {dev['attacks']} "
          f"attacks (dev threshold: {_pct(dev.get('detection_at_dev_threshold'))}); with the "
          f"unsure band [{out['band']['lo']:.4f}, {out['band']['hi']:.4f}): "
          f"{_pct(dev.get('detection_with_band'))} called synthetic, "
          f"{_pct(dev.get('unsure_share'))} of the dev images unsure")
  print(f"stored: {out['path']}; use: python -m cmfl_jax.predict --workdir={FLAGS.workdir} "
        f"--calibration={FLAGS.name} PATH...")
  return 0


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.", required=True)
  flags.DEFINE_multi_string("real", [], "Bona fide images or folders of one source.")
  flags.DEFINE_string("name", None, "Name of the calibration (letters, digits, _-.).",
                      required=True)
  flags.DEFINE_float("false_alarm", 0.05, "Guaranteed false-alarm rate (bona fide called "
                     "synthetic) on new images from the same source.")
  flags.DEFINE_float("confidence", None, "If set (e.g. 0.9): the false-alarm rate itself is "
                     "<= --false_alarm with this probability (needs more images); default: "
                     "the marginal guarantee.")
  flags.DEFINE_float("unsure_error", 0.05, "The unsure band is fitted on the dev split so that "
                     "the images given a verdict have at most this error.")
  flags.DEFINE_string("dev_split", None, "Labelled split for the price and the band (default: "
                      "the training config's val_split; '' to skip both).")
  flags.DEFINE_string("checkpoint", "best", "best | latest | STEP.")
  flags.DEFINE_bool("align", False, "Detect and align faces first (as predict --align).")
  flags.DEFINE_float("max_upscale", 2.0, "--align: faces enlarged more than this are skipped.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing calibration of this name.")


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=config_lib.parse_flags)
