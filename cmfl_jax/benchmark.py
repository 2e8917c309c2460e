"""Benchmarks, one JSON line per measurement.

  python -m cmfl_jax.benchmark --what=step [--config=configs/default.py]
      [--image_size=224 --batch_size=8] [--dtype=bfloat16] [--torch]
  python -m cmfl_jax.benchmark --what=e2e --image_size=64 --batch_size=32
  python -m cmfl_jax.benchmark --what=pipeline [--image_size=224] [--num_images=256]

`step`: the compiled train step and eval step of the configured model (default:
the paper's two_stream DenseNet-161 + CMFL) on random uint8 images: images/s,
compile time, XLA's FLOP count per step and the achieved GFLOP/s next to a
measured fp32 matmul peak, XLA's buffer sizes and the process's peak RSS. With
`--torch`, the official architecture in PyTorch (cmfl_jax.torch_reference) on
identical shapes in the same run, and the ratios.
`e2e`: the training loop as `train.py` runs it (tf.data decode + augmentation of
PNG files in memory -> global batches -> compiled step) against the step alone.
`pipeline`: the tf.data input pipeline alone (decode + geometry + train
augmentation or eval path, batched uint8), on generated PNG and JPEG files of
the given size; images/s with one tf.data thread ("per core") and with all
cores.
Warm-up excluded everywhere; medians of repeats.
"""

from __future__ import annotations

import io
import json
import os
import resource
import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags
from PIL import Image

from cmfl_jax import host_memory, input_pipeline, models, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "default.py"), "Model/loss/optimizer config.")
_WHAT = flags.DEFINE_enum("what", "step", ["step", "e2e", "pipeline"], "What to measure.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Input image size.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats (median reported).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 256, "pipeline/e2e: images per pass.")
_DTYPE = flags.DEFINE_string("dtype", None, "Compute dtype (default: config.model.dtype).")
_STEPS = flags.DEFINE_integer("steps", 5, "Steps per timed repeat.")
_TORCH = flags.DEFINE_bool("torch", False, "step: also time the official PyTorch model.")
_OFFICIAL_REPO = flags.DEFINE_string(
    "official_repo", None, "pipeline: checkout of the official PyTorch code: also time its "
    "per-image loader work (PIL decode, DataAugmenter, flip, ImageNet normalisation, numpy "
    "spectrum) in one process (= one core), as its DataLoader worker does.")


def emit(record: dict[str, Any]) -> None:
  print(json.dumps(record), flush=True)


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn: Callable[[], Any], repeats: int) -> float:
  """Median seconds of `fn()` (which must block) after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak_gflops(n: int = 2048, dtype: Any = jnp.float32) -> float:
  """Achieved GFLOP/s of one large matmul: the machine's practical peak."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  return 2 * n ** 3 / timed(lambda: f(a, a).block_until_ready(), 5) / 1e9


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) if cost and "flops" in cost else None


def _buffers_mib(compiled) -> float | None:
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  return round((mem.temp_size_in_bytes + mem.argument_size_in_bytes
                + mem.output_size_in_bytes) / 2 ** 20, 1)


def bench_config(base: ml_collections.ConfigDict, image_size: int, batch_size: int,
                 dtype: str | None) -> ml_collections.ConfigDict:
  """A copy of `base` at the benchmark's shapes and dtype."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.data.image_size = image_size
  config.train.batch_size = config.train.eval_batch_size = batch_size
  if dtype:
    config.model.dtype = dtype
  return config


def jax_step_speed(config: ml_collections.ConfigDict, steps: int, repeats: int,
                   peak: float) -> dict[str, Any]:
  """Compiled train/eval step throughput of `config`'s model, one record."""
  size, batch_size = config.data.image_size, config.train.batch_size
  mesh = train.make_mesh()
  state, programs = train.create_train_state(config, mesh)
  train_fn, eval_fn = train.compile_steps(programs, config, mesh, state)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
           "label": (np.arange(batch_size) % 2).astype(np.int32),
           "mask": np.ones(batch_size, bool)}
  batch = {k: jax.device_put(v, train.batch_sharding(mesh)) for k, v in batch.items()}
  start = time.perf_counter()
  train_compiled = train_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  eval_compiled = eval_fn.lower(state, batch).compile()
  holder = [state]

  def run_train():
    for _ in range(steps):
      holder[0], m = train_compiled(holder[0], batch)
    jax.block_until_ready(m)

  def run_eval():
    for _ in range(steps):
      out = eval_compiled(holder[0], batch)
    jax.block_until_ready(out)

  t_train = timed(run_train, repeats) / steps
  t_eval = timed(run_eval, repeats) / steps
  train_flops, eval_flops = _flops(train_compiled), _flops(eval_compiled)
  return {
      "impl": "cmfl_jax", "arch": config.model.arch, "objective": config.loss.objective,
      "image_size": size, "batch_size": batch_size, "dtype": config.model.dtype,
      "params": train.param_count(state),
      "train_images_per_sec": round(batch_size / t_train, 2),
      "eval_images_per_sec": round(batch_size / t_eval, 2),
      "train_step_ms": round(1000 * t_train, 1), "compile_s": round(compile_s, 1),
      "train_gflop_per_step": train_flops and float(f"{train_flops / 1e9:.4g}"),
      "eval_gflop_per_step": eval_flops and float(f"{eval_flops / 1e9:.4g}"),
      "train_gflops_per_sec": train_flops and round(train_flops / t_train / 1e9, 1),
      "eval_gflops_per_sec": eval_flops and round(eval_flops / t_eval / 1e9, 1),
      "matmul_peak_gflops_per_sec": round(peak, 1),
      "xla_train_buffers_mib": _buffers_mib(train_compiled),
      "peak_rss_mib": round(peak_rss_mib(), 1),
      "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
  }


def torch_step_speed(config: ml_collections.ConfigDict, steps: int,
                     repeats: int) -> dict[str, Any]:
  """The official model's train/eval speed in PyTorch on the same shapes."""
  import torch
  from cmfl_jax import torch_reference
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  size, batch_size = config.data.image_size, config.train.batch_size
  spec = models.densenet_spec(config.model.backbone, growth_rate=config.model.growth_rate,
                              block_config=config.model.block_config,
                              num_init_features=config.model.num_init_features,
                              bn_size=config.model.bn_size)
  two = config.model.arch == "two_stream"
  model = (torch_reference.MultiStreamDenseNet if two else torch_reference.OneStreamDenseNet)(
      spec, config.model.num_blocks)
  inputs = [torch.randn(batch_size, 3, size, size) for _ in range(2 if two else 1)]
  y = (torch.arange(batch_size) % 2).float()
  step = torch_reference.train_step_fn(model, config.optim.learning_rate,
                                       config.optim.weight_decay)

  def run_train():
    for _ in range(steps):
      step(inputs, y)

  def run_eval():
    model.eval()
    with torch.inference_mode():
      for _ in range(steps):
        model(*inputs)

  t_train = timed(run_train, repeats) / steps
  t_eval = timed(run_eval, repeats) / steps
  return {"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
          "arch": config.model.arch, "image_size": size, "batch_size": batch_size,
          "train_images_per_sec": round(batch_size / t_train, 2),
          "eval_images_per_sec": round(batch_size / t_eval, 2),
          "train_step_ms": round(1000 * t_train, 1), "peak_rss_mib": round(peak_rss_mib(), 1)}


def encoded_split(n: int, size: int) -> input_pipeline.Split:
  """`n` textured PNGs in memory (decoded by tf.data like the embedded benchmark)."""
  images = input_pipeline.toy_split("bench", n, size, 0).images
  encoded = []
  for img in images:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    encoded.append(buf.getvalue())
  labels = (np.arange(n) % 2).astype(np.int32)
  return input_pipeline.Split("bench", labels, np.where(labels == 1, "real", "fake"),
                              encoded=np.asarray(encoded, dtype=object))


def e2e_speed(config: ml_collections.ConfigDict, num_images: int, repeats: int) -> dict[str, Any]:
  """Training loop with the input pipeline vs the compiled step alone."""
  size, batch_size = config.data.image_size, config.train.batch_size
  config.data.balance = "none"
  split = encoded_split(num_images, size)
  mesh = train.make_mesh()
  state, programs = train.create_train_state(config, mesh)
  train_fn, _ = train.compile_steps(programs, config, mesh, state)
  sharding = train.batch_sharding(mesh)
  holder = [state]

  def epoch():
    m = None
    ds = input_pipeline.train_dataset(split, config.data, batch_size, seed=0, epoch=0)
    for batch in input_pipeline.global_batches(ds, sharding):
      holder[0], m = train_fn(holder[0], batch)
    jax.block_until_ready(m)

  fixed = next(input_pipeline.global_batches(
      input_pipeline.train_dataset(split, config.data, batch_size, 0, 0), sharding))
  n_steps = num_images // batch_size

  def steps_alone():
    m = None
    for _ in range(n_steps):
      holder[0], m = train_fn(holder[0], fixed)
    jax.block_until_ready(m)

  e2e = n_steps * batch_size / timed(epoch, repeats)
  alone = n_steps * batch_size / timed(steps_alone, repeats)
  return {"what": "e2e", "arch": config.model.arch, "image_size": size,
          "batch_size": batch_size, "dtype": config.model.dtype,
          "e2e_images_per_sec": round(e2e, 2), "step_alone_images_per_sec": round(alone, 2),
          "e2e_over_step": round(e2e / alone, 3)}



def _face_like_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  """1/f textured images: compress like photos (random noise would not)."""
  return input_pipeline.toy_split("bench", n, size, seed).images


def write_image_split(root: str, fmt: str, n: int, size: int) -> input_pipeline.Split:
  os.makedirs(root, exist_ok=True)
  images = _face_like_images(n, size)
  paths = []
  for i, img in enumerate(images):
    path = os.path.join(root, f"{i}.{fmt}")
    Image.fromarray(img).save(path, quality=95) if fmt == "jpg" else Image.fromarray(img).save(path)
    paths.append(path)
  labels = (np.arange(n) % 2).astype(np.int32)
  return input_pipeline.Split("bench", labels, np.where(labels == 1, "real", "fake"),
                              paths=np.asarray(paths))


def pipeline_throughput(split: input_pipeline.Split, data_config, train: bool, batch: int,
                        threads: int | None, repeats: int) -> float:
  """Median images/s of a full pass over `split` (after one warm-up pass)."""
  def make():
    if train:
      ds = input_pipeline.train_dataset(split, data_config, batch, seed=0, epoch=0)
    else:
      ds = input_pipeline.eval_dataset(split, data_config, batch)
    opts = tf.data.Options()
    if threads:
      opts.threading.private_threadpool_size = threads
    return ds.with_options(opts)

  times = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    n = sum(int(b["image"].shape[0]) for b in make().as_numpy_iterator())
    if i:  # first pass is warm-up (graph tracing, file cache)
      times.append(time.perf_counter() - start)
  return n / statistics.median(times)


def official_loader_throughput(repo: str, split: input_pipeline.Split, train: bool,
                               repeats: int) -> float:
  """Images/s of the official per-sample work (aligned mode) in this process.

  Imports the official helpers from `repo` at run time (nothing is copied);
  ToTensor + Normalize are done with NumPy, which is what they compute.
  """
  import random
  import sys
  sys.path.insert(0, repo)
  from helpers.data_augmentation import DataAugmenter  # noqa: E402 (official code)
  from helpers.util import rgb_to_fft_tensor_filter_with_percentile  # noqa: E402
  augmenter = DataAugmenter()
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

  def one(path):
    img = Image.open(path).convert("RGB")
    if train:
      img = augmenter.data_augment(img, augment_chance=0.5)
      if random.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    rgb = ((np.asarray(img, np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
    return rgb, rgb_to_fft_tensor_filter_with_percentile(img)

  times = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    for p in split.paths:
      one(p)
    if i:
      times.append(time.perf_counter() - start)
  return len(split) / statistics.median(times)


def pipeline_config(image_size: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(image_size=image_size, aligned=True, balance="none",
                                        augment_prob=0.5))


def pipeline_main() -> None:
  size = _IMAGE_SIZE.value
  with tempfile.TemporaryDirectory() as tmp:
    for fmt in ("jpg", "png"):
      split = write_image_split(os.path.join(tmp, fmt), fmt, _NUM_IMAGES.value, size)
      for mode in ("train", "eval"):
        for threads in (1, None):
          ips = pipeline_throughput(split, pipeline_config(size), mode == "train", _BATCH.value,
                                    threads, _REPEATS.value)
          emit({"what": "pipeline", "mode": mode, "format": fmt, "image_size": size,
                "threads": threads or os.cpu_count(), "images_per_sec": round(ips, 1),
                "images_per_sec_per_core": round(ips / (threads or os.cpu_count()), 1)})
        if _OFFICIAL_REPO.value:
          ips = official_loader_throughput(_OFFICIAL_REPO.value, split, mode == "train",
                                           _REPEATS.value)
          emit({"what": "official_loader_per_sample", "mode": mode, "format": fmt,
                "image_size": size, "threads": 1, "images_per_sec": round(ips, 1),
                "images_per_sec_per_core": round(ips, 1)})


def main(argv) -> None:
  del argv
  if _WHAT.value == "pipeline":
    pipeline_main()
    return
  config = bench_config(_CONFIG.value, _IMAGE_SIZE.value, _BATCH.value, _DTYPE.value)
  if _WHAT.value == "e2e":
    emit(e2e_speed(config, _NUM_IMAGES.value, _REPEATS.value))
    return
  mine = jax_step_speed(config, _STEPS.value, _REPEATS.value, matmul_peak_gflops())
  emit({"what": "step", **mine})
  if _TORCH.value:
    ref = torch_step_speed(config, _STEPS.value, _REPEATS.value)
    emit({"what": "step", **ref})
    emit({"what": "ratio", "image_size": config.data.image_size,
          "batch_size": config.train.batch_size, "dtype": config.model.dtype,
          "train_speedup_vs_pytorch": round(mine["train_images_per_sec"]
                                            / ref["train_images_per_sec"], 3),
          "eval_speedup_vs_pytorch": round(mine["eval_images_per_sec"]
                                           / ref["eval_images_per_sec"], 3)})


if __name__ == "__main__":
  host_memory.reexec_with_tuned_malloc()
  app.run(main)
