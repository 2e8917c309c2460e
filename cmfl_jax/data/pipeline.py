"""tf.data input pipeline: splits -> per-host slices -> uint8 batches -> global jax.Arrays.

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

import dataclasses
import json
import math
import os
from typing import Any, Callable, Iterator

import jax
import numpy as np
import tensorflow as tf
from absl import logging

from cmfl_jax.data import ops, randomize
from cmfl_jax.data.split import DataError, Encoded, Files, Pixels, Records, Split


# ----------------------------------------------------------------------------
# Epoch order and per-host slicing
# ----------------------------------------------------------------------------
def balanced_order(labels: np.ndarray, seed: int, epoch: int, balance: str,
                   made_from: np.ndarray | None = None) -> np.ndarray:
  """Example indices for one training epoch.

  balance: "oversample" (minority class re-sampled with replacement up to the
  majority size; nothing is thrown away), "truncate" (the official code: the
  larger class cut to the smaller), or "none".

  `made_from` (`Split.made_from`): every real that fakes were made from
  comes once, right before one of its fakes (drawn anew each epoch when
  there are several: reconstructions and inpaintings, or several families),
  at an even position, so an even batch never splits a pair and an epoch has
  as many fakes as reals. Examples in no pair are balanced among themselves
  and follow in (real, fake) couples.
  """
  if made_from is not None and (made_from >= 0).any():
    return _paired_order(labels, made_from, seed, epoch, balance)
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


def _paired_order(labels: np.ndarray, made_from: np.ndarray, seed: int, epoch: int,
                  balance: str) -> np.ndarray:
  rng = np.random.default_rng([seed, epoch, 2])  # its own stream: pairs are new
  fakes = np.flatnonzero(made_from >= 0)
  # One fake per real: shuffle the fakes, keep each real's first.
  shuffled = fakes[rng.permutation(len(fakes))]
  reals, first = np.unique(made_from[shuffled], return_index=True)
  units = [np.stack([reals, shuffled[first]], axis=1)]  # (real, fake)
  in_pair = np.zeros(len(labels), bool)
  in_pair[fakes] = in_pair[made_from[fakes]] = True
  rest = np.flatnonzero(~in_pair)
  if len(rest):
    rest_classes = np.unique(labels[rest])
    if len(rest_classes) == 2:
      order = rest[balanced_order(labels[rest], seed, epoch, balance)]
      units.append(order[:len(order) // 2 * 2].reshape(-1, 2))
    elif balance != "truncate":  # one class left over: each with a random other-class example
      others = np.flatnonzero(labels != rest_classes[0])
      units.append(np.stack([rest, rng.choice(others, len(rest))], axis=1))
  units_all = np.concatenate(units)
  return units_all[rng.permutation(len(units_all))].reshape(-1)


def augmentation_keys(split: Split) -> np.ndarray:
  """The index each example's random augmentation is seeded by: a fake made
  from a real takes its real's, so the pair is processed alike."""
  keys = np.arange(len(split), dtype=np.int64)
  if split.made_from is not None:
    keys = np.where(split.made_from >= 0, split.made_from, keys)
  return keys


def steps_per_epoch(split: Split, global_batch: int, balance: str, seed: int) -> int:
  if split.num_pairs() and (global_batch // jax.process_count()) % 2:
    raise DataError(f"split {split.name!r} has aligned pairs, which need an even batch per "
                    f"process; the batch is {global_batch} over {jax.process_count()} processes")
  n = len(balanced_order(split.labels, seed, 0, balance, split.made_from))
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
# Datasets
# ----------------------------------------------------------------------------
def _pixels_loader(storage: Pixels) -> Callable[[tf.Tensor], tf.Tensor]:
  table = tf.constant(storage.images)
  return lambda i: tf.gather(table, i)


def _encoded_loader(storage: Encoded) -> Callable[[tf.Tensor], tf.Tensor]:
  table = tf.constant(storage.data, tf.string)
  return lambda i: ops.decode_image(tf.gather(table, i))


def _records_loader(storage: Records) -> Callable[[tf.Tensor], tf.Tensor]:
  source = storage.source

  def fetch(i):
    return np.asarray(source[int(i)]["image"], np.uint8)

  def load(i):
    img = tf.numpy_function(fetch, [i], tf.uint8, stateful=False)
    img.set_shape([None, None, 3])
    return img

  return load


def _files_loader(storage: Files) -> Callable[[tf.Tensor], tf.Tensor]:
  paths = tf.constant(storage.paths)
  return lambda i: ops.decode_image(tf.io.read_file(tf.gather(paths, i)))


#: Storage kind -> (storage -> TF function from an index to a uint8 image).
LOADERS = {Pixels: _pixels_loader, Encoded: _encoded_loader, Records: _records_loader,
           Files: _files_loader}


@dataclasses.dataclass(frozen=True)
class InputConfig:
  """What the input pipeline needs of `config.data`, parsed and checked once
  at the boundary (`from_config`), so that the pipeline's signatures say what
  they use."""

  geometry: ops.Geometry
  balance: str = "oversample"
  augment_prob: float = 0.5
  reencode_quality: int | None = None                    # training only
  randomization: randomize.Randomization | None = None  # training only

  @classmethod
  def from_config(cls, data: Any) -> "InputConfig":
    return cls(ops.Geometry.from_config(data), str(data.balance), float(data.augment_prob),
               ops.parse_reencode(data.reencode), randomize.from_config(data))

  @classmethod
  def of(cls, value: "InputConfig | Any") -> "InputConfig":
    """`value` itself, or made from a `config.data` ConfigDict (callers and
    scripts that hold the config)."""
    return value if isinstance(value, cls) else cls.from_config(value)


def _example_dataset(split: Split, indices: np.ndarray, mask: np.ndarray, inputs: InputConfig,
                     train: bool, seed: int, epoch: int, condition: str = "none",
                     columns: dict[str, np.ndarray] | None = None) -> tf.data.Dataset:
  """Per-example dataset over `indices` of `split`, yielding image/label/mask
  and `columns`, per-example values over the whole split (the attribution
  head's "source" and "source_weight").

  `condition` post-processes each stored image first (robustness evaluation).
  """
  ops.parse_condition(condition)  # fail before building the pipeline
  geometry = inputs.geometry
  processing = inputs.randomization if train else None
  reencode_quality = inputs.reencode_quality if train else None
  prob = inputs.augment_prob
  ds = tf.data.Dataset.from_tensor_slices({
      "index": indices.astype(np.int64), "mask": mask.astype(np.bool_),
      "aug_key": augmentation_keys(split)[indices],
      "label": split.labels[indices].astype(np.int32),
      **{k: np.asarray(v)[indices] for k, v in (columns or {}).items()}})
  load = LOADERS[type(split.storage)](split.storage)

  def process(ex):
    ex = dict(ex)
    key = ex.pop("aug_key")
    seed_pair = tf.stack([tf.constant(seed, tf.int64) * 100003 + epoch, key])
    img = load(ex["index"])
    if reencode_quality is not None:  # before anything else: one storage for all classes
      img = ops.reencode(img, reencode_quality)
    aug_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed_pair, 2))
    if processing is not None:  # training only; both classes, a pair alike
      img = processing(img, seed_pair)
    if condition != "none":
      img = tf.ensure_shape(ops.postprocess(img, condition, seed_pair), [None, None, 3])
    # Official order: [resize 256] -> blur/JPEG -> [random-resized | centre crop] -> flip.
    if not geometry.aligned:
      img = ops.resize_shorter_side(img, geometry.size)
    if train:
      params = ops.augment_params(aug_seed, prob)
      img = ops.blur_and_jpeg(img, params)
    img = ops.crop_to_size(img, geometry, train, crop_seed)
    if train:
      img = ops.hflip(img, params)
    img = tf.ensure_shape(img, [geometry.size, geometry.size, 3])
    return {**ex, "image": img}

  # Plain graph code (explicit tf.cond); autograph conversion is not needed.
  process = tf.autograph.experimental.do_not_convert(process)
  return ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def train_dataset(split: Split, inputs: InputConfig | Any, global_batch: int, seed: int,
                  epoch: int, skip_batches: int = 0, stop_batch: int | None = None,
                  columns: dict[str, np.ndarray] | None = None) -> tf.data.Dataset:
  """This process's batches of one training epoch, starting after
  `skip_batches` and ending before batch `stop_batch` (default: the epoch's
  end); `columns`: see `_example_dataset`. The training loop reads its
  iterator to the end: abandoning a tf.data iterator with work in flight
  blocked the loop for 40-60 s at every epoch's end (measured on the main
  job, BENCHMARKS.md "Where the main job's time goes")."""
  inputs = InputConfig.of(inputs)
  order = balanced_order(split.labels, seed, epoch, inputs.balance, split.made_from)
  n_batches = len(order) // global_batch
  if stop_batch is not None:
    n_batches = min(n_batches, stop_batch)
  order = order[skip_batches * global_batch:n_batches * global_batch]
  local = process_slice(order, global_batch)
  ds = _example_dataset(split, local, np.ones(len(local), bool), inputs, True, seed, epoch,
                        columns=columns)
  return ds.batch(global_batch // jax.process_count(), drop_remainder=True).prefetch(
      tf.data.AUTOTUNE)


def eval_dataset(split: Split, inputs: InputConfig | Any, global_batch: int,
                 condition: str = "none", columns: dict[str, np.ndarray] | None = None
                 ) -> tf.data.Dataset:
  """Every example exactly once across hosts; the last batch padded, mask=False.
  `condition`: test-time post-processing (see `postprocess`); `columns`: see
  `_example_dataset`."""
  n = len(split)
  padded = math.ceil(n / global_batch) * global_batch
  indices = np.concatenate([np.arange(n), np.zeros(padded - n, np.int64)])
  mask = np.arange(padded) < n
  local_idx = process_slice(indices, global_batch)
  local_mask = process_slice(mask, global_batch)
  ds = _example_dataset(split, local_idx, local_mask, InputConfig.of(inputs), False, 0, 0,
                        condition, columns)
  return ds.batch(global_batch // jax.process_count()).prefetch(tf.data.AUTOTUNE)


def global_batches(ds: tf.data.Dataset, sharding: jax.sharding.Sharding) -> Iterator[dict]:
  """Turns this process's numpy batches into global batch-sharded jax.Arrays."""
  for batch in ds.as_numpy_iterator():
    yield {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def report_skipped(skipped: list[dict], workdir: str, filename: str = "data_report.json",
                   extra: dict | None = None) -> None:
  """Logs skipped files and writes them (and `extra`, e.g. the audit's
  summary) to `<workdir>/<filename>`."""
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
    json.dump({"skipped_per_split": counts, "skipped": skipped, **(extra or {})}, f, indent=1)
