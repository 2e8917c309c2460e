"""Image operations in TF graph code (the Gaussian blur: OpenCV inside
`tf.numpy_function`): decoding, the crop geometry, the paper's train
augmentation and the robustness conditions (test-time post-processing).

Everything is stateless and seeded by the caller, so an example's result
depends on its seed only (not on parallelism or on resume).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import cv2
import numpy as np
import tensorflow as tf

from cmfl_jax.data import gaussian

# tf.data runs images in parallel; OpenCV's own thread pool would oversubscribe it.
cv2.setNumThreads(1)

JPEG_QUALITIES = (60, 70, 80, 90, 100)
MAX_BLUR_SIGMA = 2.0


@dataclasses.dataclass(frozen=True)
class Geometry:
  """The crop every image gets: `size` x `size`; `aligned` inputs (face crops)
  are resized if needed, unaligned ones follow the official geometry (shorter
  side to 256/224 of the size, then a random-resized (train) or centre crop)."""

  size: int
  aligned: bool = True

  @classmethod
  def from_config(cls, data: Any) -> "Geometry":
    return cls(int(data.image_size), bool(data.aligned))


def decode_image(data: tf.Tensor) -> tf.Tensor:
  """Encoded PNG/JPEG/BMP/GIF bytes -> uint8 RGB (grey, RGBA, 16-bit handled)."""
  img = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
  img.set_shape([None, None, 3])
  return img


def _to_uint8(img: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)


_IMAGE = tf.TensorSpec([None, None, None], tf.uint8)  # HWC; channels may be unknown statically


def _one_call(fn: Callable, *specs: tf.TensorSpec) -> Callable:
  """`fn` as a single function-call op, for the branches of `tf.cond`: in
  tf.data functions conds become Switch/Merge, where each node of the branch
  not taken still costs its dispatch (1.4 ms per image for the blur and JPEG
  branches, measured; BENCHMARKS.md, "Train path")."""
  return tf.function(fn, input_signature=[_IMAGE, *specs], autograph=False)


def resize_shorter_side(img: tf.Tensor, size: int) -> tf.Tensor:
  """Official unaligned geometry, step 1: shorter side to round(size * 256 / 224)."""
  shorter = int(round(size * 256 / 224))
  h, w = tf.cast(tf.shape(img)[0], tf.float32), tf.cast(tf.shape(img)[1], tf.float32)
  scale = shorter / tf.minimum(h, w)
  new_hw = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
  return _to_uint8(tf.image.resize(img, new_hw, antialias=True))


_resize_square = _one_call(
    lambda img, size: _to_uint8(tf.image.resize(img, tf.stack([size, size]), antialias=True)),
    tf.TensorSpec([], tf.int32))


def crop_to_size(img: tf.Tensor, geometry: Geometry, train: bool,
                 seed: tf.Tensor | None) -> tf.Tensor:
  """Aligned: resize to `size` if it differs. Unaligned (after
  `resize_shorter_side`): RandomResizedCrop (train) or centre crop (eval)."""
  size = geometry.size
  if geometry.aligned:
    shape = tf.shape(img)[:2]
    same = tf.logical_and(shape[0] == size, shape[1] == size)
    return tf.cond(same, lambda: img, lambda: _resize_square(img, size))
  if train:
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(img), tf.zeros([0, 0, 4]), seed=seed, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    return _to_uint8(tf.image.resize(tf.slice(img, begin, crop_size), [size, size]))
  top = (tf.shape(img)[0] - size) // 2
  left = (tf.shape(img)[1] - size) // 2
  return img[top:top + size, left:left + size]


def resize_and_crop(img: tf.Tensor, geometry: Geometry, train: bool = False,
                    seed: tf.Tensor | None = None) -> tf.Tensor:
  """The whole geometry without augmentation (evaluation, predict)."""
  if not geometry.aligned:
    img = resize_shorter_side(img, geometry.size)
  return crop_to_size(img, geometry, train, seed)


def _blur_numpy(img: np.ndarray, sigma: np.float32) -> np.ndarray:
  if sigma <= 0 or img.size == 0:
    return img
  taps = gaussian.gaussian_taps(float(sigma))  # scipy's radius (truncate=4)
  # OpenCV's separable filter (float accumulation, rounded and saturated to
  # uint8; BORDER_REFLECT is scipy's 'reflect', repeated on small images)
  # costs 0.56 ms per 224x224 image in tf.data against 3.3 ms for the best TF
  # formulation (BENCHMARKS.md, "Train path at 224x224").
  return cv2.sepFilter2D(img, cv2.CV_8U, taps, taps, borderType=cv2.BORDER_REFLECT).reshape(img.shape)


def gaussian_blur(img: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
  """scipy.ndimage.gaussian_filter semantics (truncate=4, 'reflect' borders,
  rounded to uint8; within +-1 of scipy after rounding), per channel, for
  sigma in [0, 2]; sigma = 0 is the identity."""
  out = tf.numpy_function(_blur_numpy, [img, tf.cast(sigma, tf.float32)], tf.uint8,
                          stateful=False)
  return tf.ensure_shape(out, img.shape)


# ----------------------------------------------------------------------------
# Robustness conditions: "none", "jpeg:Q", "blur:SIGMA", "resize:FACTOR" (down
# then back up) or "noise:STD" (0-255 scale).
# ----------------------------------------------------------------------------
def _resize_down_up(img: tf.Tensor, factor: float, seed: tf.Tensor) -> tf.Tensor:
  del seed
  hw = tf.shape(img)[:2]
  small = tf.maximum(tf.cast(tf.round(tf.cast(hw, tf.float32) * factor), tf.int32), 1)
  down = tf.image.resize(img, small, antialias=True)
  return _to_uint8(tf.image.resize(down, hw, method="bicubic"))


def _add_noise(img: tf.Tensor, std: float, seed: tf.Tensor) -> tf.Tensor:
  noise = tf.random.stateless_normal(tf.shape(img), seed, stddev=std)
  return _to_uint8(tf.cast(img, tf.float32) + noise)


@dataclasses.dataclass(frozen=True)
class Condition:
  valid: Callable[[float], bool]
  allowed: str                                          # for messages
  apply: Callable[[tf.Tensor, float, tf.Tensor], tf.Tensor]


CONDITIONS: dict[str, Condition] = {
    "jpeg": Condition(lambda v: 1 <= v <= 100 and v == int(v), "integer quality 1-100",
                      lambda img, v, seed: tf.image.adjust_jpeg_quality(img, int(v))),
    "blur": Condition(lambda v: 0 < v <= MAX_BLUR_SIGMA, f"0 < sigma <= {MAX_BLUR_SIGMA}",
                      lambda img, v, seed: gaussian_blur(img, tf.constant(v, tf.float32))),
    "resize": Condition(lambda v: 0 < v < 1, "0 < factor < 1", _resize_down_up),
    "noise": Condition(lambda v: v > 0, "std > 0", _add_noise),
}
CONDITION_KINDS = ("none", *CONDITIONS)


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
  if not CONDITIONS[kind].valid(v):
    ranges = "; ".join(f"{k}: {c.allowed}" for k, c in CONDITIONS.items())
    raise ValueError(f"condition {condition!r} out of range ({ranges})")
  return kind, v


def postprocess(img: tf.Tensor, condition: str, seed: tf.Tensor) -> tf.Tensor:
  """Applies one robustness condition to a uint8 image, deterministically."""
  kind, value = parse_condition(condition)
  return img if kind == "none" else CONDITIONS[kind].apply(img, value, seed)


def parse_reencode(spec: str) -> int | None:
  """`data.reencode`: "" (off) or "jpeg:Q" -> Q (1-100)."""
  if not spec:
    return None
  kind, _, value = spec.partition(":")
  if kind != "jpeg" or not value.isdigit() or not 1 <= int(value) <= 100:
    raise ValueError(f"data.reencode must be '' or 'jpeg:Q' with Q in 1-100, got {spec!r}")
  return int(value)


def reencode(img: tf.Tensor, quality: int) -> tf.Tensor:
  """The stored image re-encoded as baseline JPEG `quality` with 4:2:0 chroma
  (libjpeg, like `adjust_jpeg_quality`): every training image then carries
  the same storage traces, whatever format it came in."""
  data = tf.io.encode_jpeg(img, quality=quality, chroma_downsampling=True)
  return tf.ensure_shape(tf.io.decode_jpeg(data, channels=3), [None, None, 3])


# ----------------------------------------------------------------------------
# The paper's train augmentation
# ----------------------------------------------------------------------------
def augment_params(seed: tf.Tensor, prob: float) -> dict[str, tf.Tensor]:
  """Random choices of the paper's train augmentation, from a stateless seed
  (one draw of five uniforms: each op of a tf.data function costs dispatch)."""
  u = tf.random.stateless_uniform([5], seed)
  qualities = tf.constant(JPEG_QUALITIES)
  return {
      "blur": u[0] < prob,
      "sigma": u[1] * MAX_BLUR_SIGMA,
      "jpeg": u[2] < prob,
      "quality": tf.gather(qualities, tf.minimum(
          tf.cast(u[3] * len(JPEG_QUALITIES), tf.int32), len(JPEG_QUALITIES) - 1)),
      "flip": u[4] < 0.5,
  }


_blur_call = _one_call(lambda img, sigma: gaussian_blur(img, sigma), tf.TensorSpec([], tf.float32))
_jpeg_call = _one_call(tf.image.adjust_jpeg_quality, tf.TensorSpec([], tf.int32))
_flip_call = _one_call(tf.image.flip_left_right)


def blur_and_jpeg(img: tf.Tensor, params: dict[str, tf.Tensor]) -> tf.Tensor:
  img = tf.cond(params["blur"], lambda: _blur_call(img, params["sigma"]), lambda: img)
  return tf.cond(params["jpeg"], lambda: _jpeg_call(img, params["quality"]), lambda: img)


def hflip(img: tf.Tensor, params: dict[str, tf.Tensor]) -> tf.Tensor:
  return tf.cond(params["flip"], lambda: _flip_call(img), lambda: img)


def augment(img: tf.Tensor, seed: tf.Tensor, prob: float) -> tf.Tensor:
  """The paper's train augmentation for aligned inputs, in the official order:
  Gaussian blur (p, sigma ~ U[0, 2]), JPEG re-encoding (p, quality from
  {60, ..., 100}), then horizontal flip (0.5)."""
  p = augment_params(seed, prob)
  return tf.ensure_shape(hflip(blur_and_jpeg(img, p), p), [None, None, 3])
