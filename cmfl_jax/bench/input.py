"""Input-side benchmarks behind `python -m cmfl_jax.bench --what=pipeline|e2e`:
the tf.data pipeline alone, the official loader's per-image work, and the
training loop (pipeline + compiled step) against the step alone.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from PIL import Image

from cmfl_jax import backend
from cmfl_jax.bench.timing import interleaved_times, timed
from cmfl_jax.data import ops, pipeline, sources
from cmfl_jax.data.split import Encoded, Files, Split
from cmfl_jax.training import losses, steps


def encoded_split(n: int, size: int, fmt: str = "PNG") -> Split:
  """`n` textured images encoded in memory (decoded by tf.data like the
  embedded benchmark); JPEG at quality 95."""
  encoded = []
  for img in _face_like_images(n, size):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, quality=95)
    encoded.append(buf.getvalue())
  labels = (np.arange(n) % 2).astype(np.int32)
  return Split("bench", labels, np.where(labels == 1, "real", "fake"),
                              Encoded(np.asarray(encoded, dtype=object)))


def e2e_speed(config: ml_collections.ConfigDict, num_images: int, repeats: int) -> dict[str, Any]:
  """Training loop with the input pipeline vs the compiled step alone."""
  size, batch_size = config.data.image_size, config.train.batch_size
  config.data.balance = "none"
  split = encoded_split(num_images, size)
  mesh = steps.make_mesh()
  state, programs = steps.create_train_state(config, mesh)
  train_fn, _ = steps.compile_steps(programs, losses.LossConfig.from_config(config.loss), mesh,
                                    state, backend.step_compiler_options(programs.model, mesh))
  sharding = steps.batch_sharding(mesh)
  holder = [state]

  def epoch():
    m = None
    ds = pipeline.train_dataset(split, config.data, batch_size, seed=0, epoch=0)
    for batch in pipeline.global_batches(ds, sharding):
      holder[0], m = train_fn(holder[0], batch)
    jax.block_until_ready(m)

  fixed = next(pipeline.global_batches(
      pipeline.train_dataset(split, config.data, batch_size, 0, 0), sharding))
  n_steps = num_images // batch_size

  def steps_alone():
    m = None
    for _ in range(n_steps):
      holder[0], m = train_fn(holder[0], fixed)
    jax.block_until_ready(m)

  # Interleaved: at 224x224 one pass takes minutes, and drift between two
  # back-to-back measurements was as large as the effect being measured.
  epoch_times, alone_times = interleaved_times([epoch, steps_alone], repeats)
  e2e = n_steps * batch_size / statistics.median(epoch_times)
  alone = n_steps * batch_size / statistics.median(alone_times)
  return {"what": "e2e", "arch": config.model.arch, "image_size": size,
          "batch_size": batch_size, "dtype": config.model.dtype,
          "e2e_images_per_sec": round(e2e, 2), "step_alone_images_per_sec": round(alone, 2),
          "e2e_over_step": round(e2e / alone, 3),
          # per round (the two passes of a round are back to back): the spread
          # says how far the median ratio can be trusted on a busy machine
          "e2e_over_step_per_round": [round(a / e, 3) for e, a in zip(epoch_times, alone_times)]}


def _face_like_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  """1/f textured images: compress like photos (random noise would not)."""
  return sources.toy_split("bench", n, size, seed).images


def write_image_split(root: str, fmt: str, n: int, size: int) -> Split:
  os.makedirs(root, exist_ok=True)
  images = _face_like_images(n, size)
  paths = []
  for i, img in enumerate(images):
    path = os.path.join(root, f"{i}.{fmt}")
    Image.fromarray(img).save(path, quality=95) if fmt == "jpg" else Image.fromarray(img).save(path)
    paths.append(path)
  labels = (np.arange(n) % 2).astype(np.int32)
  return Split("bench", labels, np.where(labels == 1, "real", "fake"),
                              Files(np.asarray(paths)))


def pipeline_throughput(split: Split, data_config, train: bool, batch: int,
                        threads: int | None, repeats: int) -> tuple[float, float]:
  """(images/s of a pass over `split`, seconds to build the dataset), medians
  after one warm-up pass. Training builds its dataset once per epoch (tracing
  the map function), so the build is reported apart: at 256 images it would
  be a third of the time, at the paper's 70,000 per epoch it is nothing."""
  def make():
    if train:
      ds = pipeline.train_dataset(split, data_config, batch, seed=0, epoch=0)
    else:
      ds = pipeline.eval_dataset(split, data_config, batch)
    opts = tf.data.Options()
    if threads:
      opts.threading.private_threadpool_size = threads
    return ds.with_options(opts)

  passes, builds = [], []
  for i in range(repeats + 1):
    start = time.perf_counter()
    ds = make()
    built = time.perf_counter()
    n = sum(int(b["image"].shape[0]) for b in ds.as_numpy_iterator())
    if i:  # first pass is warm-up (graph tracing, file cache)
      builds.append(built - start)
      passes.append(time.perf_counter() - built)
  return n / statistics.median(passes), statistics.median(builds)


def official_loader_throughput(repo: str, split: Split, train: bool,
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


def op_costs(size: int, num_images: int, repeats: int) -> list[dict[str, Any]]:
  """Per-image cost of each op of the train path (JPEG source, one tf.data
  thread) and its share of the per-image time at the paper's probabilities:
  each op is timed on every image, over decoding alone."""
  encoded = tf.constant(list(encoded_split(num_images, size, "JPEG").storage.data))

  def seed(i):
    return tf.stack([tf.constant(7, tf.int64), i])

  def ms_per_image(fn) -> float:
    ds = tf.data.Dataset.from_tensor_slices((encoded, tf.range(num_images, dtype=tf.int64)))
    ds = ds.map(lambda e, i: fn(ops.decode_image(e), i)).batch(32)
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = 1
    ds = ds.with_options(opts)
    return 1e3 * timed(lambda: [None for _ in ds], repeats) / num_images

  prob = pipeline_config(size).augment_prob
  ops_table = {  # name -> (op applied to every image, fraction of images it applies to)
      "augment parameters": (lambda img, i: (img, ops.augment_params(seed(i), prob)), 1.0),
      "gaussian blur": (lambda img, i: ops.gaussian_blur(
          img, tf.random.stateless_uniform([], seed(i), 0.0, ops.MAX_BLUR_SIGMA)), prob),
      "jpeg re-encoding": (lambda img, i: tf.image.adjust_jpeg_quality(
          img, tf.gather(tf.constant(ops.JPEG_QUALITIES), i % len(ops.JPEG_QUALITIES))), prob),
      "flip": (lambda img, i: tf.image.flip_left_right(img), 0.5),
  }
  decode = ms_per_image(lambda img, i: img)
  costs = {"decode (+ batching)": (decode, 1.0)}
  costs.update({name: (max(ms_per_image(fn) - decode, 0.0), p)
                for name, (fn, p) in ops_table.items()})
  total = sum(c * p for c, p in costs.values())
  return [{"what": "op_cost", "op": name, "image_size": size, "ms_when_applied": round(c, 3),
           "applied_to": p, "share": round(c * p / total, 3)} for name, (c, p) in costs.items()]


def pipeline_config(image_size: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(image_size=image_size, aligned=True, balance="none",
                                        reencode="", augment_prob=0.5))


def pipeline_records(size: int, num_images: int, batch: int, repeats: int,
                     official_repo: str | None = None) -> list[dict[str, Any]]:
  """Pipeline throughput on generated JPEGs and PNGs, train and eval paths, one
  tf.data thread and all cores (and the official per-image work if a checkout
  of the official code is given)."""
  records = []
  with tempfile.TemporaryDirectory() as tmp:
    for fmt in ("jpg", "png"):
      split = write_image_split(os.path.join(tmp, fmt), fmt, num_images, size)
      for mode in ("train", "eval"):
        for threads in (1, None):
          ips, build_s = pipeline_throughput(split, pipeline_config(size), mode == "train",
                                             batch, threads, repeats)
          records.append({"what": "pipeline", "mode": mode, "format": fmt, "image_size": size,
                          "threads": threads or os.cpu_count(), "images_per_sec": round(ips, 1),
                          "images_per_sec_per_core": round(ips / (threads or os.cpu_count()), 1),
                          "build_seconds_per_epoch": round(build_s, 3)})
        if official_repo:
          ips = official_loader_throughput(official_repo, split, mode == "train", repeats)
          records.append({"what": "official_loader_per_sample", "mode": mode, "format": fmt,
                          "image_size": size, "threads": 1, "images_per_sec": round(ips, 1),
                          "images_per_sec_per_core": round(ips, 1)})
  return records
