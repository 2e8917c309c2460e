"""Export a trained detector for use outside this project.

  python -m cmfl_jax.export --workdir=DIR [--checkpoint=best|latest|STEP]
      [--calibration=NAME] --output=OUT [--overwrite]

Writes OUT/saved_model/ (TensorFlow SavedModel, signature `serving_default`:
`images` uint8 [batch, H, W, 3] -> P(real) outputs and verdict thresholds, and
with the attribution head the generator: class index or -1 for unknown),
OUT/model.jax_exported (the same function through `jax.export`), and the
model card OUT/model_card.json + OUT/MODEL_CARD.md; all or nothing (docs/export.md,
"All or nothing"). Score with it: `python -m cmfl_jax.predict --model=OUT PATH...`.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from cmfl_jax import backend

if __name__ == "__main__":  # before the imports below: they take seconds and would run twice
  backend.reexec_with_tuned_malloc()

# pylint: disable=wrong-import-position
from absl import app, flags, logging

from cmfl_jax.exporting import ExportError, staging

FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    staging.check_target(FLAGS.output, FLAGS.overwrite)  # before the seconds-long imports
    from cmfl_jax.exporting import bundle  # pylint: disable=import-outside-toplevel
    model_card = bundle.export_model(FLAGS.workdir, FLAGS.output, FLAGS.checkpoint,
                                     FLAGS.calibration, FLAGS.overwrite)
  except ExportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  ck = model_card["checkpoint"]
  logging.info("%s", json.dumps({"output": FLAGS.output, "checkpoint": f"{ck['kind']}_{ck['step']}",
                                 "outputs": list(model_card["outputs"])}))
  return 0


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.", required=True)
  flags.DEFINE_string("checkpoint", "best", "best | latest | STEP.")
  flags.DEFINE_string("calibration", None, "Name of a stored calibration "
                      "(<workdir>/calibrations/NAME.json) whose threshold goes in the artifact.")
  flags.DEFINE_string("output", None, "Directory to create.", required=True)
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output (only once the new "
                    "export is complete).")


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
