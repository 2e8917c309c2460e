"""On-device input transforms: ImageNet RGB normalisation and the log spectrum.

Both run inside the compiled step so the host pipeline only ships uint8 pixels
(4x less host->device traffic than float32 and no FFT on the CPU workers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Added to |FFT| before the log, as in the published method.
LOG_EPS = 1e-3
#: Percentiles used to rescale each channel's log magnitude to [-1, 1].
LOW_PERCENTILE = 5.0
HIGH_PERCENTILE = 95.0


def to_unit_range(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; floats are assumed to be in [0, 1] already."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def normalize_rgb(images: jax.Array) -> jax.Array:
  """ImageNet mean/std normalisation of `[..., H, W, 3]` images (uint8 or [0, 1])."""
  x = to_unit_range(images)
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (x - mean) / std


def _order_key(values: jax.Array) -> jax.Array:
  """float32 -> int32 with the same order (an involution: applying it twice
  gives the bits back). XLA:CPU sorts int32 about 4x faster than float32,
  whose sort goes through a generic comparator."""
  bits = jax.lax.bitcast_convert_type(values, jnp.int32)
  return bits ^ ((bits >> 31) & jnp.int32(0x7FFFFFFF))


@jax.custom_jvp
def _sorted_values(values: jax.Array) -> jax.Array:
  """`jnp.sort(values, axis=-1)` for finite float32, via the integer keys,
  with the gradient of a sort (the integer keys carry none: without the rule
  the percentiles would be constants to a gradient, and explanations through
  the spectrum would miss their part)."""
  keys = jnp.sort(_order_key(values), axis=-1, stable=False)
  return jax.lax.bitcast_convert_type(_order_key(keys), jnp.float32)


@_sorted_values.defjvp
def _sorted_values_jvp(primals, tangents):
  (values,), (tangent,) = primals, tangents
  order = jnp.argsort(values, axis=-1)  # only when differentiating
  return (jnp.take_along_axis(values, order, axis=-1),
          jnp.take_along_axis(tangent, order, axis=-1))


def _percentile_linear(values: jax.Array, q: float) -> jax.Array:
  """Percentile over the (sorted) last axis with linear interpolation (numpy's
  default); written out so the two needed percentiles share one sort."""
  n = values.shape[-1]
  pos = (q / 100.0) * (n - 1)
  lo_idx = int(pos // 1)
  hi_idx = min(lo_idx + 1, n - 1)
  frac = pos - lo_idx
  lo = values[..., lo_idx]
  hi = values[..., hi_idx]
  return lo + (hi - lo) * frac


def log_spectrum(images: jax.Array) -> jax.Array:
  """Per-channel scaled log-magnitude spectrum, DC centred, in [-1, 1].

  Follows REFERENCE.md exactly: ``F = log(|FFT2(x_c)| + 1e-3)`` for each colour
  channel of x in [0, 1]; rescale with that channel's 5th/95th percentiles
  (linear interpolation over all H*W values) to ``2 * ((F - lo) / (hi - lo) - 0.5)``,
  clip to [-1, 1], then fftshift.

  Args:
    images: `[..., H, W, C]`, uint8 or float in [0, 1].

  Returns:
    float32 array of the same shape.
  """
  x = to_unit_range(images)
  # FFT over the spatial axes; move channels in front of them first.
  x = jnp.moveaxis(x, -1, -3)  # [..., C, H, W]
  magnitude = jnp.abs(jnp.fft.fft2(x))
  f = jnp.log(magnitude + LOG_EPS)
  flat = _sorted_values(f.reshape(f.shape[:-2] + (-1,)))
  lo = _percentile_linear(flat, LOW_PERCENTILE)[..., None, None]
  hi = _percentile_linear(flat, HIGH_PERCENTILE)[..., None, None]
  # A (near) constant channel gives hi == lo, where numpy's 0/0 yields NaN. We
  # use the limit of the scaling instead (sign of F - lo), never NaN.
  degenerate = hi <= lo
  scaled = 2.0 * ((f - lo) / jnp.where(degenerate, 1.0, hi - lo) - 0.5)
  f = jnp.clip(jnp.where(degenerate, jnp.sign(f - lo), scaled), -1.0, 1.0)
  f = jnp.fft.fftshift(f, axes=(-2, -1))
  return jnp.moveaxis(f, -3, -1).astype(jnp.float32)
