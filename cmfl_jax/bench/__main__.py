"""Benchmarks, one JSON line per measurement.

  python -m cmfl_jax.bench --what=step [--config=configs/bench.py]
      [--config.data.image_size=224 --config.train.batch_size=8] [--config.model.dtype=bfloat16]
      [--torch] [--baseline=configs/bench.py --baseline.model.cpu_matmul=ynnpack]
  python -m cmfl_jax.bench --what=flops --config.train.batch_size=64 [--config.model.ops=xla]
  python -m cmfl_jax.bench --what=e2e --config.data.image_size=64 --config.train.batch_size=32
  python -m cmfl_jax.bench --what=pipeline [--config.data.image_size=224] [--num_images=256]

`step`: the compiled train step and eval step of the configured model (default:
the paper's two_stream DenseNet-161 + CMFL) on random uint8 images: images/s,
compile time, XLA's FLOP count per step and the achieved GFLOP/s next to a
measured matmul peak in the compute dtype (their ratio is the MFU), XLA's
buffer sizes, the process's peak RSS and, on accelerators, peak device memory.
With `--torch`, the official architecture in PyTorch (cmfl_jax.bench.torch_reference)
on identical shapes in the same run (on the GPU if JAX runs on one; autocast
for bfloat16), timed in alternation with cmfl_jax so that slow drifts of the
machine hit both alike, and the ratios. `--baseline=CONFIG` (with its own
`--baseline.*` overrides) adds a second cmfl_jax variant, at the same image and
batch size, to the same alternation: an A/B of a switch in one run. Needs neither TensorFlow nor data.
`flops`: the un-optimised steps' FLOP count at any shape without compiling or
running them (for MFU on a machine other than this one).
`e2e`: the training loop as `train.py` runs it (tf.data decode + augmentation of
PNG files in memory -> global batches -> compiled step) against the step alone.
`pipeline`: the tf.data input pipeline alone (decode + geometry + train
augmentation or eval path, batched uint8), on generated PNG and JPEG files of
the given size; images/s with one tf.data thread ("per core") and with all
cores; then each train-path op's cost per image and share of the per-image time.
Shapes and variants are config overrides: the image size is
`config.data.image_size`, the batch (train and eval alike) `config.train.batch_size`,
the compute dtype `config.model.dtype`. Warm-up excluded everywhere; medians
of repeats.
"""

from __future__ import annotations

import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from cmfl_jax import backend
from cmfl_jax import config as config_lib

_DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "configs", "bench.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "Model/loss/optimizer config.")
_BASELINE = config_flags.DEFINE_config_file(
    "baseline", None, "step: config of a second cmfl_jax variant (with --baseline.* overrides), "
    "timed in the same alternation, with its ratio (an A/B in one run).")
_WHAT = flags.DEFINE_enum("what", "step", ["step", "flops", "e2e", "pipeline"], "What to measure.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats (median reported).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 256, "pipeline/e2e: images per pass.")
_STEPS = flags.DEFINE_integer("steps", 5, "Steps per timed repeat.")
_TORCH = flags.DEFINE_bool("torch", False, "step: also time the official PyTorch model.")
_OFFICIAL_REPO = flags.DEFINE_string(
    "official_repo", None, "pipeline: checkout of the official PyTorch code: also time its "
    "per-image loader work (PIL decode, DataAugmenter, flip, ImageNet normalisation, numpy "
    "spectrum) in one process (= one core), as its DataLoader worker does.")


def _at_bench_shapes(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Evaluation at the training batch size (one shape for both steps)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.eval_batch_size = config.train.batch_size
  return config


def _differences(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> list[str]:
  fa, fb = a.to_dict(), b.to_dict()

  def flat(d, prefix=""):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from flat(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}", v

  left, right = dict(flat(fa)), dict(flat(fb))
  return sorted(f"{k}={right.get(k)}" for k in set(left) | set(right) if left.get(k) != right.get(k))


def main(argv) -> int:
  del argv
  import jax

  from cmfl_jax.bench import step
  config = _at_bench_shapes(_CONFIG.value)
  try:
    for candidate in (config, _BASELINE.value):
      if candidate is not None:
        config_lib.validate(candidate, jax.device_count())
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return config_lib.USAGE_ERROR
  size, batch = config.data.image_size, config.train.batch_size
  if _WHAT.value == "flops":
    step.emit({"what": "flops", **step.step_flops(config)})
    return 0
  if _WHAT.value in ("pipeline", "e2e"):
    from cmfl_jax.bench import input as bench_input  # TensorFlow and PIL: only for these modes
    if _WHAT.value == "e2e":
      step.emit(bench_input.e2e_speed(config, _NUM_IMAGES.value, _REPEATS.value))
    else:
      for rec in bench_input.pipeline_records(size, _NUM_IMAGES.value, batch, _REPEATS.value,
                                              _OFFICIAL_REPO.value):
        step.emit(rec)
      for rec in bench_input.op_costs(size, _NUM_IMAGES.value, _REPEATS.value):
        step.emit(rec)
    return 0
  import jax.numpy as jnp
  peak = step.matmul_peak(jnp.dtype(config.model.dtype))
  runners = [step.jax_runner(config, _STEPS.value)]
  if _BASELINE.value is not None:
    baseline = ml_collections.ConfigDict(_BASELINE.value.to_dict())
    baseline.data.image_size, baseline.train.batch_size = size, batch  # the same shapes
    baseline = _at_bench_shapes(baseline)
    runners.append(step.jax_runner(baseline, _STEPS.value))
    runners[-1].record["baseline"] = _differences(config, baseline)
  if _TORCH.value:
    runners.append(step.torch_runner(config, _STEPS.value))
  records = step.step_records(runners, _REPEATS.value, peak)
  for rec in records:
    step.emit({"what": "step", **rec})
  for ref in records[1:]:
    step.emit(step.ratio_record(records[0], ref))
  return 0


if __name__ == "__main__":
  backend.reexec_with_tuned_malloc()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=config_lib.parse_flags)
