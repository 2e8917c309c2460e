"""Convert a checkpoint of the official PyTorch code into an Orbax checkpoint.

  python -m cmfl_jax.convert --torch_checkpoint=model_0_0.pth --arch=two_stream --output=DIR
      [--config=configs/default.py] [--config.model.input=freq] [--config.data.aligned=False]

The file is what the official `train.py` saves (a dict whose ``state_dict``
holds a `MultiStreamDenseNet` or `OneStreamDenseNet`; `nn.DataParallel`'s
``module.`` prefix is accepted). DIR receives `checkpoints/best/0`: a full train
state (fresh optimizer state) and metadata with the config, so
``python -m cmfl_jax.main --mode=eval --workdir=DIR`` and
``python -m cmfl_jax.predict --workdir=DIR`` load it like a trained one. There
is no dev threshold: predict's verdicts use 0.5 (with a warning).

The config (default: the paper's, `configs/default.py`) must describe the
saved model: densenet161 through transition2 for the official code; for a
one_stream model trained with ``--spectra fft`` add ``--config.model.input=freq``.
`data.image_size` and `data.aligned` travel with the checkpoint to predict
(official ``--is_aligned``: aligned=True, the default).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Sequence

from cmfl_jax import backend

if __name__ == "__main__":  # before the imports below: they take seconds and would run twice
  backend.reexec_with_tuned_malloc()

# pylint: disable=wrong-import-position
import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cmfl_jax import models
from cmfl_jax import config as config_lib
from cmfl_jax.models import torch_weights as weights
from cmfl_jax.training import checkpointing, steps

FLAGS = flags.FLAGS

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "default.py")


def converted_state(config: ml_collections.ConfigDict, torch_checkpoint: str) -> steps.TrainState:
  """The train state a fresh run would start from (step 0, zero Adam moments),
  holding the file's weights; no random initialisation is computed."""
  mesh = steps.make_mesh()
  abstract, programs = steps.create_train_state(config, mesh, abstract=True)
  params, batch_stats = weights.load_state(
      programs.train_graphdef, abstract.params, abstract.batch_stats,
      weights.read_state_dict(torch_checkpoint), weights.OFFICIAL, source=torch_checkpoint)

  def fresh(params, batch_stats):
    return steps.fresh_state(params, batch_stats, programs.tx, config.seed)

  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  return jax.jit(fresh, out_shardings=shardings)(params, batch_stats)


def convert(config: ml_collections.ConfigDict, torch_checkpoint: str, output: str) -> str:
  """Writes `torch_checkpoint` as the step-0 "best" checkpoint of workdir `output`.

  Returns the checkpoint directory. Raises `weights.WeightsError` (listing the
  keys) if the file does not fit the configured model.
  """
  best_dir = checkpointing.checkpoint_dir(output, checkpointing.BEST)
  if os.path.isdir(best_dir) and os.listdir(best_dir):
    raise FileExistsError(f"{best_dir} already holds checkpoints; choose a new --output")
  if config.model.arch == "one_stream" and config.loss.objective != "bce":
    config = config.copy_and_resolve_references()
    config.loss.objective = "bce"  # the official one-stream baselines; CMFL needs two heads
  state = converted_state(config, torch_checkpoint)
  meta = {"step": 0, "epoch": 0, "step_in_epoch": 0, "steps_per_epoch": None, "val_loss": None,
          "best_val_loss": None, "dev_threshold": None,
          "converted_from": os.path.abspath(torch_checkpoint),
          "config": json.loads(config.to_json_best_effort())}
  manager = checkpointing.make_managers(output)[checkpointing.BEST]
  # Ranked worst (+inf), so a later training run in this workdir replaces it.
  checkpointing.save(manager, 0, state, meta, metrics={"val_loss": math.inf})
  manager.wait_until_finished()
  return best_dir


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flag_values
  config = fv.config
  config.model.arch = fv.arch
  check = config.copy_and_resolve_references()
  if check.model.arch == "one_stream":
    check.loss.objective = "bce"  # what `convert` saves for one-stream models
  try:
    config_lib.validate(check, jax.device_count())
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return config_lib.USAGE_ERROR
  if config.model.arch == "one_stream":
    logging.info("one_stream input: %s (official --spectra fft needs --config.model.input=freq)",
                 config.model.input)
  try:
    path = convert(config, fv.torch_checkpoint, fv.output)
  except (weights.WeightsError, ImportError, FileExistsError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {path}/0 ({config.model.arch}, {config.data.image_size}px, "
        f"aligned={config.data.aligned}); use it with --workdir={fv.output}")
  return 0


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  fv = flag_values
  config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                  "Python config file describing the saved model.",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_string("torch_checkpoint", None, "Checkpoint saved by the official PyTorch code.",
                      required=True, flag_values=fv)
  flags.DEFINE_enum("arch", None, list(models.ARCHITECTURES),
                    "two_stream (MultiStreamDenseNet) | one_stream (OneStreamDenseNet).",
                    required=True, flag_values=fv)
  flags.DEFINE_string("output", None, "New workdir for the Orbax checkpoint.", required=True,
                      flag_values=fv)


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=config_lib.parse_flags)
