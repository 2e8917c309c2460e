"""Image files as model inputs: each file checked (header, size, truncation),
decoded and cropped by tf.data as the eval pipeline does, a few batches
ahead; a file failing the checks or TF's decoder becomes an error row and the
rest are still read."""

from __future__ import annotations

import os
import re
from typing import Callable, Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from cmfl_jax.data import ops, readers


def _read_checked(path: bytes, min_side: int, max_pixels: int) -> tuple[bytes, bytes]:
  """(file bytes, b"") or (b"", reason) for an `os.fsencode`d path: the header
  check of `readers.check_image_file` and `readers.truncation`, on the very bytes TF
  then decodes. Never raises."""
  name = os.fsdecode(path)
  reason = readers.check_image_file(name, min_side, max_pixels, full_decode=False)
  if reason is None:
    try:
      with open(name, "rb") as f:
        data = f.read()
    except OSError as e:
      return b"", f"unreadable file ({e})".encode()
    reason = readers.truncation(data)
    if reason is None:
      return data, b""
    reason = f"not a readable image ({reason})"
  return b"", reason.encode()


def file_loader(geometry: ops.Geometry, data_config
                ) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
  """TF function: path -> (model input, reason); a checked file is decoded
  and cropped as the eval pipeline does (`ops.decode_image`,
  `ops.resize_and_crop`: TF's decoders, so JPEG pixels can differ slightly
  from PIL's, while the scores are those `evaluate` gives), a file failing the
  checks gives zeros and its reason without being decoded."""
  min_side, max_pixels = readers.min_image_side(data_config), int(data_config.max_pixels)
  size = geometry.size

  def load(path):
    data, reason = tf.numpy_function(lambda p: _read_checked(p, min_side, max_pixels), [path],
                                     [tf.string, tf.string], stateful=False)
    data.set_shape([])
    reason.set_shape([])
    image = tf.cond(tf.equal(reason, ""),
                    lambda: ops.resize_and_crop(ops.decode_image(data), geometry),
                    lambda: tf.zeros([size, size, 3], tf.uint8))
    return tf.ensure_shape(image, [size, size, 3]), reason

  return tf.autograph.experimental.do_not_convert(load)


def _tf_reason(error: tf.errors.OpError) -> str:
  """TF's message without the graph and tf.data decorations."""
  message = re.sub(r"\{\{.*?\}\}", "", error.message).strip().split("\n")[0]
  message = re.sub(r"^Error in user-defined function .*? with iterator: \S+: ", "", message)
  return f"not a readable image (TF: {message.strip() or type(error).__name__})"


def _one_by_one(paths: Sequence[str], load: Callable) -> tuple[np.ndarray, list[str]]:
  """`load` of each path on its own: a decode error costs only its own file."""
  elements = tf.data.Dataset.from_tensor_slices([os.fsencode(p) for p in paths]).map(load)
  zeros = np.zeros(elements.element_spec[0].shape, np.uint8)
  images, reasons = [], []
  iterator = elements.as_numpy_iterator()
  for _ in paths:  # the iterator goes on after an element's error
    try:
      image, reason = next(iterator)
      reason = reason.decode()
    except tf.errors.OpError as e:
      image, reason = zeros, _tf_reason(e)
    images.append(image)
    reasons.append(reason)
  return np.stack(images), reasons


def _file_batches(paths: Sequence[str], load: Callable, batch_size: int
                  ) -> Iterator[tuple[Sequence[str], np.ndarray, list[str]]]:
  """(paths, images, reasons) of consecutive batches, in input order, from a
  tf.data pipeline (parallel, deterministic decode; a few batches ahead).
  A decode error the checks did not foresee fails a whole batch and shifts
  the next ones: that batch is then loaded one file at a time and the
  pipeline restarted after it."""
  start = 0
  while start < len(paths):
    batches = (tf.data.Dataset.from_tensor_slices([os.fsencode(p) for p in paths[start:]])
               .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(batch_size).prefetch(2).as_numpy_iterator())
    restart = False
    while start < len(paths) and not restart:
      try:
        images, reasons = next(batches)
        reasons = [r.decode() for r in reasons]
      except tf.errors.OpError:
        images, reasons = _one_by_one(paths[start:start + batch_size], load)
        restart = True
      yield paths[start:start + len(images)], images, reasons
      start += len(images)


def file_rows(paths: Sequence[str], geometry: ops.Geometry, data_config,
              batch_size: int) -> Iterator[dict]:
  """{path, image} or {path, error} per file, in order, streamed (`_file_batches`)."""
  load = file_loader(geometry, data_config)
  for names, images, reasons in _file_batches(paths, load, batch_size):
    for path, image, reason in zip(names, images, reasons):
      yield {"path": path, "error": f"error: {reason}"} if reason else {"path": path,
                                                                         "image": image}


def input_geometry(config: ml_collections.ConfigDict, aligned: bool | None = None,
                   align=None) -> ops.Geometry:
  """The model's input crop: aligned faces with `align`, else as trained
  unless `aligned` says otherwise."""
  return ops.Geometry(config.data.image_size,
                      True if align else config.data.aligned if aligned is None else aligned)
