"""tf.data input pipeline: sources -> per-host slices -> uint8 batches -> global jax.Arrays.

Design:
* A *split* is a list of examples (label, generator name, and the image as a
  file path, in-memory pixels, encoded bytes or a TFDS random-access record).
  Sources build splits: protocol CSVs in the official format
  (`subject,filename,attack_type`), image folders, TFDS datasets, the embedded
  benchmark (`synthetic`) or the tiny `toy` data. Unusable files are found and
  dropped (and reported) before training starts.
* The epoch order is a NumPy permutation of indices derived from
  `(seed, epoch)`, so the position in the stream is just `(epoch, step)`:
  resuming skips consumed *indices* before any decoding happens.
* Random augmentation uses stateless TF ops seeded by `(seed, epoch, index)`,
  so an example's augmentation does not depend on parallelism or on resume.
* Each process reads only its slice of every global batch; `global_batches`
  assembles them into batch-sharded `jax.Array`s.
* Images leave the host as uint8; normalisation and spectra run on device.

Labels: 1 = bona fide, 0 = attack.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import math
import os
import zlib
from typing import Any, Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

PROTOCOL_HEADER = ("subject", "filename", "attack_type")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
#: Formats tf.io.decode_image reads (as named by PIL).
DECODABLE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "MPO")
REAL_FOLDER = "real"
JPEG_QUALITIES = (60, 70, 80, 90, 100)
MAX_BLUR_SIGMA = 2.0
_BLUR_RADIUS = int(4.0 * MAX_BLUR_SIGMA + 0.5)  # scipy's truncate=4 at the largest sigma


class DataError(ValueError):
  """Bad input data, with a message naming the file/line at fault."""


@dataclasses.dataclass
class Split:
  """One split: labels, generator names and either file paths or pixels."""

  name: str
  labels: np.ndarray                  # int32 [N], 1 = bona fide
  generators: np.ndarray              # str [N], "real" for bona fide
  paths: np.ndarray | None = None     # str [N] (absolute)
  images: np.ndarray | None = None    # uint8 [N, H, W, 3]
  source: Any = None                  # random-access records with "image" (TFDS data source)
  encoded: np.ndarray | None = None   # object [N] of encoded image bytes

  def __len__(self) -> int:
    return len(self.labels)

  def check_both_classes(self) -> None:
    counts = np.bincount(self.labels, minlength=2)
    if counts.min() == 0:
      missing = "bona fide (label 1)" if counts[1] == 0 else "attack (label 0)"
      raise DataError(f"split {self.name!r} has no {missing} images ({len(self)} examples)")


# ----------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------
def resolve_under_root(root: str, relative: str, where: str) -> str:
  """Joins a protocol filename to the data root, refusing paths that escape it."""
  if not relative:
    raise DataError(f"{where}: empty filename")
  if os.path.isabs(relative):
    raise DataError(f"{where}: absolute path {relative!r} not allowed; filenames are relative "
                    "to the data root")
  root_real = os.path.realpath(root)
  full = os.path.realpath(os.path.join(root_real, relative))
  if os.path.commonpath([root_real, full]) != root_real:
    raise DataError(f"{where}: filename {relative!r} escapes the data root {root!r}")
  return full


def read_protocol_csv(csv_path: str, data_root: str, name: str | None = None) -> Split:
  """Reads an official-format protocol CSV: header `subject,filename,attack_type`;
  empty attack_type = bona fide, anything else = attack (its value = generator)."""
  if not os.path.isfile(csv_path):
    raise DataError(f"protocol file not found: {csv_path}")
  paths, labels, gens = [], [], []
  with open(csv_path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header[:3]) != PROTOCOL_HEADER:
      raise DataError(f"{csv_path}:1: header must be {','.join(PROTOCOL_HEADER)}, got {header}")
    for lineno, row in enumerate(reader, start=2):
      if not row or all(not c.strip() for c in row):
        continue
      if len(row) < 3:
        raise DataError(f"{csv_path}:{lineno}: expected 3 columns "
                        f"({','.join(PROTOCOL_HEADER)}), got {len(row)}: {row}")
      attack = row[2].strip()
      paths.append(resolve_under_root(data_root, row[1].strip(), f"{csv_path}:{lineno}"))
      labels.append(0 if attack else 1)
      gens.append(attack or "real")
  if not paths:
    raise DataError(f"{csv_path}: no examples")
  return Split(name or os.path.splitext(os.path.basename(csv_path))[0],
               np.asarray(labels, np.int32), np.asarray(gens), paths=np.asarray(paths))


def _smooth_field(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  """Random images with a natural ~1/f amplitude spectrum, in [0, 1]."""
  f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
  amp = 1.0 / np.maximum(f, 1.0 / size) ** 1.2
  phase = rng.uniform(0, 2 * np.pi, (n, 3, size, size))
  x = np.real(np.fft.ifft2(amp * np.exp(1j * phase)))
  x -= x.min(axis=(-2, -1), keepdims=True)
  x /= x.max(axis=(-2, -1), keepdims=True)
  return np.moveaxis(x, 1, -1)


def toy_split(name: str, num_examples: int, image_size: int,
              seed: int | Sequence[int]) -> Split:
  """Tiny deterministic stand-in data for tests and smoke runs.

  Bona fide: 1/f random fields. Attack: the same kind of content, rendered at
  half resolution and nearest-neighbour upsampled (the classic GAN upsampling
  trace: spectral replicas at half the sampling rate). Not a benchmark.
  """
  rng = np.random.default_rng(seed)
  labels = np.arange(num_examples, dtype=np.int32) % 2
  rng.shuffle(labels)
  images = _smooth_field(rng, num_examples, image_size)
  fake = labels == 0
  if fake.any():
    half = _smooth_field(rng, int(fake.sum()), image_size // 2)
    images[fake] = half.repeat(2, axis=1).repeat(2, axis=2)[:, :image_size, :image_size]
  images = (images * 255).round().astype(np.uint8)
  gens = np.where(labels == 1, "real", "toy_nn_upsampler")
  return Split(name, labels, gens, images=images)


def read_image_folder(root: str, split: str) -> Split:
  """Folder layout `root/<split>/real/**` (bona fide) and `root/<split>/<generator>/**`
  (attacks, generator = folder name); files with image extensions, sorted."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise DataError(f"image folder {split_dir} not found (expected <root>/<split>/<real|generator>/)")
  paths, labels, gens = [], [], []
  for gen in sorted(os.listdir(split_dir)):
    gen_dir = os.path.join(split_dir, gen)
    if not os.path.isdir(gen_dir):
      continue
    for dirpath, dirnames, filenames in os.walk(gen_dir):
      dirnames.sort()
      for fn in sorted(filenames):
        if fn.lower().endswith(IMAGE_EXTENSIONS):
          paths.append(os.path.join(dirpath, fn))
          labels.append(1 if gen == REAL_FOLDER else 0)
          gens.append(gen)
  if not paths:
    raise DataError(f"no images under {split_dir}")
  return Split(split, np.asarray(labels, np.int32), np.asarray(gens), paths=np.asarray(paths))


def check_image_file(path: str, min_side: int, max_pixels: int, full_decode: bool) -> str | None:
  """Why `path` cannot be used, or None. Never raises.

  Reads the header (format, size) and, with `full_decode`, every pixel, which
  is the only way to find truncated files before they break an epoch.
  """
  try:
    size = os.path.getsize(path)
  except OSError:
    return "missing file"
  if size == 0:
    return "empty (0-byte) file"
  try:
    with Image.open(path) as im:
      if im.format not in DECODABLE_FORMATS:
        return f"unsupported image format {im.format}"
      w, h = im.size
      if w * h > max_pixels:
        return f"too large ({w}x{h} > {max_pixels} pixels; decompression bomb?)"
      if min(w, h) < min_side:
        return f"too small ({w}x{h}; min side {min_side})"
      if full_decode:
        im.load()
  except Exception as e:  # noqa: BLE001 - any decoder failure means "unusable"
    return f"not a readable image ({type(e).__name__}: {e})"
  return None


def min_image_side(data_config: Any) -> int:
  """Smallest usable shorter side: `data.min_side`, or the crop size when < 0
  (unaligned inputs are first resized to 256/224 of it, so half is enough)."""
  if data_config.min_side >= 0:
    return data_config.min_side
  return data_config.image_size if data_config.aligned else data_config.image_size // 2


def cache_in_memory(split: Split) -> Split:
  """Decodes every file once into host memory (`data.cache`): later epochs read
  pixels instead of files. Needs images of one size (aligned crops)."""
  if split.paths is None:
    return split
  # The same decoder as the file path (TF's), so cached pixels are identical.
  arrays = [decode_image(tf.io.read_file(p)).numpy() for p in split.paths]
  shapes = {a.shape for a in arrays}
  if len(shapes) > 1:
    raise DataError(f"data.cache needs images of one size; split {split.name!r} has "
                    f"{sorted(shapes)[:3]}...")
  return dataclasses.replace(split, images=np.stack(arrays), paths=None)


def scan_split(split: Split, data_config: Any) -> tuple[Split, list[dict]]:
  """Drops unusable files (listed with reasons) so no epoch dies on one of them."""
  if split.paths is None or data_config.verify == "none":
    return split, []
  full = data_config.verify == "decode"
  min_side = min_image_side(data_config)
  check = lambda p: check_image_file(p, min_side, data_config.max_pixels, full)  # noqa: E731
  with concurrent.futures.ThreadPoolExecutor(max(4, os.cpu_count() or 1)) as pool:
    reasons = list(pool.map(check, split.paths))
  bad = [{"split": split.name, "path": str(p), "reason": r}
         for p, r in zip(split.paths, reasons) if r is not None]
  keep = np.asarray([r is None for r in reasons])
  return Split(split.name, split.labels[keep], split.generators[keep], paths=split.paths[keep]), bad


def load_splits(data_config: Any, names: Sequence[str] | None = None
                ) -> tuple[dict[str, Split], list[dict]]:
  """The named splits (default: train, val and every eval split of
  `config.data`) with unusable files removed; returns (splits, skipped files)."""
  if names is None:
    names = [data_config.train_split, data_config.val_split, *data_config.eval_splits]
  names = list(dict.fromkeys(n for n in names if n))
  source = data_config.source
  splits, skipped = {}, []
  if source in ("tfds", "synthetic"):
    from cmfl_jax import synthetic_faces, tfds_faces  # noqa: F401 - registers the builders
    synthetic_builder = (synthetic_faces.prepare(data_config.synthetic_config,
                                                 data_config.tfds_data_dir)
                         if source == "synthetic" else None)
  for name in names:
    if source == "toy":
      sizes = dict(data_config.toy_sizes)
      splits[name] = toy_split(name, sizes.get(name, sizes.get("default", 64)),
                               data_config.image_size,
                               seed=[data_config.toy_seed, zlib.crc32(name.encode())])
    elif source == "csv":
      csv_path = os.path.join(data_config.protocol_dir, f"{name}.csv")
      splits[name] = read_protocol_csv(csv_path, data_config.data_root, name)
    elif source == "folder":
      splits[name] = read_image_folder(data_config.data_root, name)
    elif source == "tfds":
      splits[name] = tfds_faces.load_split(data_config, name)
    elif source == "synthetic":
      splits[name] = tfds_faces.split_from_builder(synthetic_builder, name)
    else:
      raise ValueError(f"unknown data source {source!r}; choose synthetic, csv, folder, tfds "
                       "or toy")
    splits[name], bad = scan_split(splits[name], data_config)
    skipped += bad
    splits[name].check_both_classes()
    if data_config.cache:
      splits[name] = cache_in_memory(splits[name])
  return splits, skipped


# ----------------------------------------------------------------------------
# Epoch order and per-host slicing
# ----------------------------------------------------------------------------
def balanced_order(labels: np.ndarray, seed: int, epoch: int, balance: str) -> np.ndarray:
  """Example indices for one training epoch.

  balance: "oversample" (minority class re-sampled with replacement up to the
  majority size; nothing is thrown away), "truncate" (the official code: the
  larger class cut to the smaller), or "none".
  """
  rng = np.random.default_rng([seed, epoch])
  by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
  if balance == "none":
    order = np.arange(len(labels))
  elif balance in ("oversample", "truncate"):
    # Truncation keeps the same examples every epoch (first n, as the official code).
    n = max(map(len, by_class)) if balance == "oversample" else min(map(len, by_class))
    parts = []
    for idx in by_class:
      if len(idx) >= n:
        parts.append(idx[:n])
      else:
        parts.append(np.concatenate([idx, rng.choice(idx, n - len(idx), replace=True)]))
    order = np.concatenate(parts)
  else:
    raise ValueError(f"unknown balance mode {balance!r}")
  return rng.permutation(order)


def steps_per_epoch(split: Split, global_batch: int, balance: str, seed: int) -> int:
  n = len(balanced_order(split.labels, seed, 0, balance))
  if n < global_batch:
    raise DataError(f"split {split.name!r} has {n} training examples per epoch, fewer than the "
                    f"global batch size {global_batch}")
  return n // global_batch


def process_slice(global_indices: np.ndarray, global_batch: int) -> np.ndarray:
  """This process's part of each global batch (contiguous rows of every batch)."""
  nproc, pid = jax.process_count(), jax.process_index()
  if global_batch % nproc:
    raise ValueError(f"global batch {global_batch} not divisible by {nproc} processes")
  local = global_batch // nproc
  batches = global_indices.reshape(-1, global_batch)
  return batches[:, pid * local:(pid + 1) * local].reshape(-1)


# ----------------------------------------------------------------------------
# Decoding and augmentation (TF graph code)
# ----------------------------------------------------------------------------
def pil_to_rgb8(im: Image.Image) -> np.ndarray:
  """PIL image of any mode (grey, RGBA, palette, 16-bit) -> uint8 RGB array."""
  if im.mode.startswith("I"):  # 16/32-bit integer greyscale
    arr = np.asarray(im, np.float64)
    full = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
    im = Image.fromarray(np.clip(np.round(arr * (255.0 / full)), 0, 255).astype(np.uint8))
  return np.asarray(im.convert("RGB"), np.uint8)


def decode_image(data: tf.Tensor) -> tf.Tensor:
  """Encoded PNG/JPEG/BMP/GIF bytes -> uint8 RGB (grey, RGBA, 16-bit handled)."""
  img = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
  img.set_shape([None, None, 3])
  return img


def _to_uint8(img: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)


def resize_shorter_side(img: tf.Tensor, size: int) -> tf.Tensor:
  """Official unaligned geometry, step 1: shorter side to round(size * 256 / 224)."""
  shorter = int(round(size * 256 / 224))
  h, w = tf.cast(tf.shape(img)[0], tf.float32), tf.cast(tf.shape(img)[1], tf.float32)
  scale = shorter / tf.minimum(h, w)
  new_hw = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
  return _to_uint8(tf.image.resize(img, new_hw, antialias=True))


def crop_to_size(img: tf.Tensor, size: int, aligned: bool, train: bool,
                 seed: tf.Tensor | None) -> tf.Tensor:
  """Aligned: resize to `size` if it differs. Unaligned (after
  `resize_shorter_side`): RandomResizedCrop (train) or centre crop (eval)."""
  if aligned:
    shape = tf.shape(img)[:2]
    same = tf.logical_and(shape[0] == size, shape[1] == size)
    return tf.cond(same, lambda: img,
                   lambda: _to_uint8(tf.image.resize(img, [size, size], antialias=True)))
  if train:
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(img), tf.zeros([0, 0, 4]), seed=seed, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    return _to_uint8(tf.image.resize(tf.slice(img, begin, crop_size), [size, size]))
  top = (tf.shape(img)[0] - size) // 2
  left = (tf.shape(img)[1] - size) // 2
  return img[top:top + size, left:left + size]


def resize_and_crop(img: tf.Tensor, size: int, aligned: bool, train: bool,
                    seed: tf.Tensor | None) -> tf.Tensor:
  """The whole geometry without augmentation (evaluation, predict)."""
  if not aligned:
    img = resize_shorter_side(img, size)
  return crop_to_size(img, size, aligned, train, seed)


def gaussian_blur(img: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
  """scipy.ndimage.gaussian_filter semantics (truncate=4, 'reflect' borders),
  separable, for sigma in [0, 2]; sigma = 0 is the identity."""
  x = tf.cast(img, tf.float32)[None]
  r = tf.range(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=tf.float32)
  radius = tf.floor(4.0 * sigma + 0.5)
  k = tf.where(tf.abs(r) <= radius, tf.exp(-0.5 * tf.square(r / tf.maximum(sigma, 1e-6))), 0.0)
  k = tf.where(sigma > 0, k, tf.cast(tf.equal(r, 0.0), tf.float32))
  k = k / tf.reduce_sum(k)
  x = tf.pad(x, [[0, 0], [_BLUR_RADIUS] * 2, [_BLUR_RADIUS] * 2, [0, 0]], mode="SYMMETRIC")
  kh = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1])
  kw = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1])
  x = tf.nn.depthwise_conv2d(x, kh, [1, 1, 1, 1], "VALID")
  x = tf.nn.depthwise_conv2d(x, kw, [1, 1, 1, 1], "VALID")
  return tf.cast(tf.clip_by_value(tf.round(x[0]), 0, 255), tf.uint8)


# Test-time post-processing (robustness conditions): "none", "jpeg:Q",
# "blur:SIGMA", "resize:FACTOR" (down then back up) or "noise:STD" (0-255 scale).
CONDITION_KINDS = ("none", "jpeg", "blur", "resize", "noise")


def parse_condition(condition: str) -> tuple[str, float]:
  """"jpeg:70" -> ("jpeg", 70.0), with the value's range checked."""
  kind, _, value = condition.partition(":")
  if kind not in CONDITION_KINDS or (kind == "none") != (value == ""):
    raise ValueError(f"bad condition {condition!r}: use 'none', 'jpeg:Q', 'blur:SIGMA', "
                     "'resize:FACTOR' or 'noise:STD'")
  if kind == "none":
    return kind, 0.0
  try:
    v = float(value)
  except ValueError:
    raise ValueError(f"bad condition {condition!r}: {value!r} is not a number") from None
  ok = {"jpeg": 1 <= v <= 100 and v == int(v), "blur": 0 < v <= MAX_BLUR_SIGMA,
        "resize": 0 < v < 1, "noise": v > 0}[kind]
  if not ok:
    raise ValueError(f"condition {condition!r} out of range (jpeg: integer quality 1-100; "
                     f"blur: 0 < sigma <= {MAX_BLUR_SIGMA}; resize: 0 < factor < 1; noise: > 0)")
  return kind, v


def postprocess(img: tf.Tensor, condition: str, seed: tf.Tensor) -> tf.Tensor:
  """Applies one robustness condition to a uint8 image, deterministically."""
  kind, value = parse_condition(condition)
  if kind == "jpeg":
    return tf.image.adjust_jpeg_quality(img, int(value))
  if kind == "blur":
    return gaussian_blur(img, tf.constant(value, tf.float32))
  if kind == "resize":
    hw = tf.shape(img)[:2]
    small = tf.maximum(tf.cast(tf.round(tf.cast(hw, tf.float32) * value), tf.int32), 1)
    down = tf.image.resize(img, small, antialias=True)
    return _to_uint8(tf.image.resize(down, hw, method="bicubic"))
  if kind == "noise":
    noise = tf.random.stateless_normal(tf.shape(img), seed, stddev=value)
    return _to_uint8(tf.cast(img, tf.float32) + noise)
  return img


def augment_params(seed: tf.Tensor, prob: float) -> dict[str, tf.Tensor]:
  """Random choices of the paper's train augmentation, from a stateless seed."""
  seeds = tf.random.experimental.stateless_split(seed, 5)
  return {
      "blur": tf.random.stateless_uniform([], seeds[0]) < prob,
      "sigma": tf.random.stateless_uniform([], seeds[1], 0.0, MAX_BLUR_SIGMA),
      "jpeg": tf.random.stateless_uniform([], seeds[2]) < prob,
      "quality": tf.gather(tf.constant(JPEG_QUALITIES), tf.random.stateless_uniform(
          [], seeds[3], 0, len(JPEG_QUALITIES), tf.int32)),
      "flip": tf.random.stateless_uniform([], seeds[4]) < 0.5,
  }


def blur_and_jpeg(img: tf.Tensor, params: dict[str, tf.Tensor]) -> tf.Tensor:
  img = tf.cond(params["blur"], lambda: gaussian_blur(img, params["sigma"]), lambda: img)
  return tf.cond(params["jpeg"], lambda: tf.image.adjust_jpeg_quality(img, params["quality"]),
                 lambda: img)


def hflip(img: tf.Tensor, params: dict[str, tf.Tensor]) -> tf.Tensor:
  return tf.cond(params["flip"], lambda: tf.image.flip_left_right(img), lambda: img)


def augment(img: tf.Tensor, seed: tf.Tensor, prob: float) -> tf.Tensor:
  """The paper's train augmentation for aligned inputs, in the official order:
  Gaussian blur (p, sigma ~ U[0, 2]), JPEG re-encoding (p, quality from
  {60, ..., 100}), then horizontal flip (0.5)."""
  p = augment_params(seed, prob)
  return tf.ensure_shape(hflip(blur_and_jpeg(img, p), p), [None, None, 3])


# ----------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------
def _example_dataset(split: Split, indices: np.ndarray, mask: np.ndarray, data_config: Any,
                     train: bool, seed: int, epoch: int, condition: str = "none"
                     ) -> tf.data.Dataset:
  """Per-example dataset over `indices` of `split`, yielding image/label/mask.

  `condition` post-processes each stored image first (robustness evaluation).
  """
  parse_condition(condition)  # fail before building the pipeline
  size = data_config.image_size
  aligned = bool(data_config.aligned)
  prob = float(data_config.augment_prob)
  ds = tf.data.Dataset.from_tensor_slices({
      "index": indices.astype(np.int64), "mask": mask.astype(np.bool_),
      "label": split.labels[indices].astype(np.int32)})
  if split.images is not None:
    table = tf.constant(split.images)
    load = lambda i: tf.gather(table, i)  # noqa: E731
  elif split.encoded is not None:
    table = tf.constant(split.encoded, tf.string)
    load = lambda i: decode_image(tf.gather(table, i))  # noqa: E731
  elif split.source is not None:
    source = split.source

    def fetch(i):
      return np.asarray(source[int(i)]["image"], np.uint8)

    def load(i):
      img = tf.numpy_function(fetch, [i], tf.uint8, stateful=False)
      img.set_shape([None, None, 3])
      return img
  else:
    paths = tf.constant(split.paths)
    load = lambda i: decode_image(tf.io.read_file(tf.gather(paths, i)))  # noqa: E731

  def process(ex):
    seed_pair = tf.stack([tf.constant(seed, tf.int64) * 100003 + epoch, ex["index"]])
    img = load(ex["index"])
    aug_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed_pair, 2))
    if condition != "none":
      img = tf.ensure_shape(postprocess(img, condition, seed_pair), [None, None, 3])
    # Official order: [resize 256] -> blur/JPEG -> [random-resized | centre crop] -> flip.
    if not aligned:
      img = resize_shorter_side(img, size)
    if train:
      params = augment_params(aug_seed, prob)
      img = blur_and_jpeg(img, params)
    img = crop_to_size(img, size, aligned, train, crop_seed)
    if train:
      img = hflip(img, params)
    img = tf.ensure_shape(img, [size, size, 3])
    return {"image": img, "label": ex["label"], "mask": ex["mask"], "index": ex["index"]}

  # Plain graph code (explicit tf.cond); autograph conversion is not needed.
  process = tf.autograph.experimental.do_not_convert(process)
  return ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def train_dataset(split: Split, data_config: Any, global_batch: int, seed: int, epoch: int,
                  skip_batches: int = 0) -> tf.data.Dataset:
  """This process's batches of one training epoch, starting after `skip_batches`."""
  order = balanced_order(split.labels, seed, epoch, data_config.balance)
  n_batches = len(order) // global_batch
  order = order[skip_batches * global_batch:n_batches * global_batch]
  local = process_slice(order, global_batch)
  ds = _example_dataset(split, local, np.ones(len(local), bool), data_config, True, seed, epoch)
  return ds.batch(global_batch // jax.process_count(), drop_remainder=True).prefetch(
      tf.data.AUTOTUNE)


def eval_dataset(split: Split, data_config: Any, global_batch: int,
                 condition: str = "none") -> tf.data.Dataset:
  """Every example exactly once across hosts; the last batch padded, mask=False.
  `condition`: test-time post-processing (see `postprocess`)."""
  n = len(split)
  padded = math.ceil(n / global_batch) * global_batch
  indices = np.concatenate([np.arange(n), np.zeros(padded - n, np.int64)])
  mask = np.arange(padded) < n
  local_idx = process_slice(indices, global_batch)
  local_mask = process_slice(mask, global_batch)
  ds = _example_dataset(split, local_idx, local_mask, data_config, False, 0, 0, condition)
  return ds.batch(global_batch // jax.process_count()).prefetch(tf.data.AUTOTUNE)


def global_batches(ds: tf.data.Dataset, sharding: jax.sharding.Sharding) -> Iterator[dict]:
  """Turns this process's numpy batches into global batch-sharded jax.Arrays."""
  for batch in ds.as_numpy_iterator():
    yield {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def split_summary(splits: dict[str, Split]) -> Sequence[str]:
  return [f"{name}: {len(s)} examples, {int(s.labels.sum())} bona fide, "
          f"{int(len(s) - s.labels.sum())} attack" for name, s in splits.items()]


def report_skipped(skipped: list[dict], workdir: str, filename: str = "data_report.json") -> None:
  """Logs skipped files and writes them to `<workdir>/<filename>`."""
  if jax.process_index() != 0:
    return
  counts: dict[str, int] = {}
  for item in skipped:
    counts[item["split"]] = counts.get(item["split"], 0) + 1
  for item in skipped[:20]:
    logging.warning("skipped %s (%s): %s", item["path"], item["split"], item["reason"])
  if skipped:
    logging.warning("skipped %d unusable files in total, per split: %s (all listed in %s)",
                    len(skipped), counts, filename)
  tf.io.gfile.makedirs(workdir)
  with tf.io.gfile.GFile(os.path.join(workdir, filename), "w") as f:
    json.dump({"skipped_per_split": counts, "skipped": skipped}, f, indent=1)
