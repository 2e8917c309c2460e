"""Benchmarks, one JSON line per measurement.

  python -m cmfl_jax.benchmark --what=pipeline [--image_size=224] [--num_images=256]

`pipeline`: the tf.data input pipeline alone (decode + geometry + train
augmentation or eval path, batched uint8), on generated PNG and JPEG files of
the given size; images/s with one tf.data thread ("per core") and with all
cores. Warm-up excluded; median of repeats.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image

from cmfl_jax import input_pipeline

_WHAT = flags.DEFINE_enum("what", "pipeline", ["pipeline"], "What to measure.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Stored and output image size.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 256, "Images per measurement pass.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed passes (median reported).")
_OFFICIAL_REPO = flags.DEFINE_string(
    "official_repo", None, "Checkout of the official PyTorch code: also time its per-image "
    "loader work (PIL decode, DataAugmenter, flip, ImageNet normalisation, numpy spectrum) in "
    "one process (= one core), as its DataLoader worker does.")


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


def main(argv) -> None:
  del argv
  size = _IMAGE_SIZE.value
  with tempfile.TemporaryDirectory() as tmp:
    for fmt in ("jpg", "png"):
      split = write_image_split(os.path.join(tmp, fmt), fmt, _NUM_IMAGES.value, size)
      for mode in ("train", "eval"):
        for threads in (1, None):
          ips = pipeline_throughput(split, pipeline_config(size), mode == "train", _BATCH.value,
                                    threads, _REPEATS.value)
          print(json.dumps({
              "what": "pipeline", "mode": mode, "format": fmt, "image_size": size,
              "threads": threads or os.cpu_count(), "images_per_sec": round(ips, 1),
              "images_per_sec_per_core": round(ips / (threads or os.cpu_count()), 1)}),
              flush=True)
        if _OFFICIAL_REPO.value:
          ips = official_loader_throughput(_OFFICIAL_REPO.value, split, mode == "train",
                                           _REPEATS.value)
          print(json.dumps({
              "what": "official_loader_per_sample", "mode": mode, "format": fmt,
              "image_size": size, "threads": 1, "images_per_sec": round(ips, 1),
              "images_per_sec_per_core": round(ips, 1)}), flush=True)


if __name__ == "__main__":
  app.run(main)
