"""CPU kernels with hand-written gradients, used when the kernel family is
"gemm" (`cmfl_jax.backend`): same values and parameters as XLA's own ops.

XLA:CPU's convolutions, their gradients and select-and-scatter run far below
the machine's matmul peak (BENCHMARKS.md), so the stem's kernel gradient,
the 3x3 convolutions and the max pool are built from GEMMs and elementwise
ops here; training-mode BatchNorm has a single-pass backward on every
backend.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode BatchNorm over all axes but the last: (y, batch mean, biased
  batch variance).

  The hand-written backward (the textbook formula, x-hat recomputed from x)
  reads x and dY once for the two reductions and once for dX; autodiff of the
  forward instead stores x - mean and makes more full-size passes, which on
  CPU costs more than the arithmetic. The returned statistics are for the
  running averages only: gradients do not flow back through them.
  """
  return _batch_norm_forward(x, scale, bias, epsilon)[0]


def _batch_norm_forward(x, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axes)
  var = jnp.maximum(jnp.mean(jnp.square(xf), axes) - jnp.square(mean), 0.0)
  inv = jax.lax.rsqrt(var + epsilon)
  y = ((xf - mean) * (inv * scale) + bias).astype(x.dtype)
  return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv, scale = residuals
  dy = cotangents[0].astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  x_hat = (x.astype(jnp.float32) - mean) * inv
  dbias = jnp.sum(dy, axes)
  dscale = jnp.sum(dy * x_hat, axes)
  dx = (scale * inv / n) * (n * dy - dbias - x_hat * dscale)
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_bwd)


def _patches(x: jax.Array, kh: int, kw: int, stride: int, pad: int) -> jax.Array:
  """im2col: (B, Ho, Wo, kh * kw * C) in HWIO-flattened order."""
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (x.shape[1] + 2 * pad - kh) // stride + 1
  wo = (x.shape[2] + 2 * pad - kw) // stride + 1
  return jnp.concatenate([xp[:, i:i + stride * (ho - 1) + 1:stride,
                             j:j + stride * (wo - 1) + 1:stride]
                          for i in range(kh) for j in range(kw)], axis=-1)


def conv_nhwc(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def stem_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """A convolution whose kernel gradient is an im2col matmul.

  For the 3-channel 7x7 stem, XLA:CPU's convolution-shaped kernel gradient
  is ~4x slower than `patches^T @ dy` (BENCHMARKS.md); the forward pass (and
  so evaluation) keeps the convolution, which is faster there.
  """
  return conv_nhwc(x, kernel, stride, pad)


def _stem_conv_fwd(x, kernel, stride, pad):
  return conv_nhwc(x, kernel, stride, pad), (x, kernel)


def _stem_conv_bwd(stride, pad, residuals, dy):
  x, kernel = residuals
  kh, kw, cin, cout = kernel.shape
  cols = _patches(x, kh, kw, stride, pad).reshape(-1, kh * kw * cin)
  dkernel = (cols.T @ dy.reshape(-1, cout)).reshape(kernel.shape).astype(kernel.dtype)
  # Unused (and removed by XLA) when x is the input image, as in training.
  dx = jax.vjp(lambda v: conv_nhwc(v, kernel, stride, pad), x)[1](dy)[0]
  return dx, dkernel


stem_conv.defvjp(_stem_conv_fwd, _stem_conv_bwd)


_TAPS = [(i, j) for i in range(3) for j in range(3)]


def _materialize(x: jax.Array) -> jax.Array:
  """`x`, computed once into memory before its consumers.

  XLA:CPU fuses cheap producers into every consumer and recomputes them per
  read (`optimization_barrier` is removed before fusion on CPU). A product
  with the identity matrix is exact for finite values and is never fused
  into a consumer, at the cost of one small GEMM over the last axis.
  """
  eye = jnp.eye(x.shape[-1], dtype=jnp.float32)
  return (x.astype(jnp.float32) @ eye).astype(x.dtype)


def _kernel_as_matrix(kernel: jax.Array) -> jax.Array:
  """(3, 3, in, out) -> (in, 9 * out), taps in `_TAPS` order."""
  cin, cout = kernel.shape[2:]
  return kernel.transpose(2, 0, 1, 3).reshape(cin, 9 * cout)


def _pad_axis(x: jax.Array, before: int, after: int, axis: int) -> jax.Array:
  """Zero padding along one axis."""
  widths = [(0, 0)] * x.ndim
  widths[axis] = (before, after)
  return jnp.pad(x, widths)


def _shift(x: jax.Array, d: int, axis: int) -> jax.Array:
  """out[k] = x[k + d] along `axis` (d in -1, 0, 1), zero where out of range."""
  if d == 0:
    return x
  kept = jax.lax.slice_in_dim(x, max(d, 0), x.shape[axis] + min(d, 0), axis=axis)
  return _pad_axis(kept, int(d < 0), int(d > 0), axis)


def _conv3x3_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
  b, h, w, cin = x.shape
  cout = kernel.shape[-1]
  # Z[p, (i, j)] = X[p] @ W[i, j]; Y[p] = sum over taps of Z[p + (i, j) - 1, (i, j)].
  z = (x.reshape(-1, cin) @ _kernel_as_matrix(kernel)).reshape(b, h, w, 9, cout)
  # The taps are summed separably, along each kernel row and then across the
  # rows: XLA:CPU runs this 2-3x faster than nine 2-D shifted reads of Z.
  rows = [sum(_shift(z[:, :, :, 3 * i + j], j - 1, axis=2) for j in range(3)) for i in range(3)]
  return sum(_shift(rows[i], i - 1, axis=1) for i in range(3))


@jax.custom_vjp
def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """3x3 / stride 1 / pad 1 convolution (NHWC, HWIO) built from GEMMs.

  XLA:CPU's own convolution runs at about half the matmul peak here and its
  gradients at about a third. Forward: one GEMM Z = X @ Wc to (N, 9 * out)
  (Wc: the kernel as (in, 9 * out)), then a shift-and-add of Z's 9 taps.
  Backward: dY's 9 shifted copies form dZ; dX = dZ @ Wc^T and dWc = X^T @ dZ
  are two large GEMMs. See BENCHMARKS.md.
  """
  return _conv3x3_forward(x, kernel)


def _conv3x3_fwd(x, kernel):
  return _conv3x3_forward(x, kernel), (x, kernel)


def _conv3x3_bwd(residuals, dy):
  x, kernel = residuals
  b, h, w, cin = x.shape
  cout = kernel.shape[-1]
  # dY is read 9 times below: materialise it once, or XLA fuses its producer
  # (the next layer's BatchNorm backward) into every read and recomputes it.
  dy = _materialize(dy)
  dyp = jnp.pad(dy, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # dZ[p, (i, j)] = dY[p - (i, j) + 1]: what tap (i, j) of pixel p contributed to.
  dz = jnp.stack([dyp[:, 2 - i:2 - i + h, 2 - j:2 - j + w] for i, j in _TAPS],
                 axis=3).reshape(b * h * w, 9 * cout)
  dx = (dz @ _kernel_as_matrix(kernel).T.astype(dz.dtype)).reshape(x.shape).astype(x.dtype)
  dwc = x.reshape(-1, cin).T @ dz.astype(x.dtype)
  dkernel = dwc.reshape(cin, 3, 3, cout).transpose(1, 2, 0, 3).astype(kernel.dtype)
  return dx, dkernel


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)



def _max_pool_forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Window maxima and the index of each window's first maximal tap (row-major
  scan, as PyTorch's kernel)."""
  ho, wo = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  out = idx = None
  for t, (i, j) in enumerate(_TAPS):
    s = xp[:, i:i + 2 * (ho - 1) + 1:2, j:j + 2 * (wo - 1) + 1:2]
    if out is None:
      out, idx = s, jnp.zeros(s.shape, jnp.int8)
    else:
      idx = jnp.where(s > out, jnp.int8(t), idx)
      out = jnp.maximum(out, s)
  return out, idx


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """3x3 / stride 2 / pad 1 max pooling as a maximum of 9 strided slices.

  Same values as `nnx.max_pool`. The gradient goes to the first maximal
  element of each window, as in PyTorch, and is computed from dY by selects,
  pads and one interleave, all elementwise (XLA:CPU's select-and-scatter is
  several times slower, BENCHMARKS.md).
  """
  return _max_pool_forward(x)[0]


def _max_pool_fwd(x):
  out, idx = _max_pool_forward(x)
  return out, (idx, x.shape)


def _interleave_taps(a0: jax.Array, a1: jax.Array, a2: jax.Array, axis: int) -> jax.Array:
  """Transpose of taking taps 0, 1, 2 of a stride-2 window along `axis`.

  Tap k of window r reads padded position 2r + k: even positions 2m collect
  a0[m] + a2[m - 1], odd positions 2m + 1 collect a1[m]. Returns length
  2 * (n + 1) along `axis` (n = windows).
  """
  even = _pad_axis(a0, 0, 1, axis) + _pad_axis(a2, 1, 0, axis)
  odd = _pad_axis(a1, 0, 1, axis)
  both = jnp.stack([even, odd], axis=axis + 1)
  return both.reshape(*both.shape[:axis], -1, *both.shape[axis + 2:])


def _max_pool_bwd(residuals, dy):
  idx, (_, h, w, _) = residuals
  # Materialise dY and the tap index once: otherwise XLA fuses their producers
  # (the whole dense block's gradient sum, the forward maxima) into each of
  # the reads below and recomputes them.
  dy, idx = _materialize(dy), _materialize(idx)
  zero = jnp.zeros((), dy.dtype)
  taps = [[jnp.where(idx == 3 * i + j, dy, zero) for j in range(3)] for i in range(3)]
  rows = [_interleave_taps(taps[0][j], taps[1][j], taps[2][j], axis=1) for j in range(3)]
  dxp = _interleave_taps(*rows, axis=2)
  return (dxp[:, 1:h + 1, 1:w + 1],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)

