"""Flax NNX models: a configurable DenseNet and the one/two-stream detectors.

Layout is NHWC. Channel order of every dense concatenation is [input, new],
as in torchvision, so weights convert one-to-one. Initialisation follows
torchvision's DenseNet (Kaiming-normal convs, BN weight 1 / bias 0) and
PyTorch's default `nn.Linear` init for the heads.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cmfl_jax import spectrum

# PyTorch BatchNorm momentum 0.1 == Flax momentum 0.9.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
ARCHS = ("two_stream", "one_stream")
ONE_STREAM_INPUTS = ("rgb", "freq")
# How the stem, 3x3 convolutions and max pool are computed (same parameters
# and values either way): "gemm" = this module's GEMM-built kernels (XLA:CPU's
# convolutions and select-and-scatter are slow), "xla" = XLA's own (cuDNN on
# GPU), "auto" = "gemm" on CPU, "xla" elsewhere.
OPS = ("auto", "gemm", "xla")


def resolve_ops(ops: str = "auto") -> str:
  """The kernel family `ops` stands for on the default backend."""
  if ops not in OPS:
    raise ValueError(f"model ops must be one of {OPS}, got {ops!r}")
  if ops == "auto":
    return "gemm" if jax.default_backend() == "cpu" else "xla"
  return ops


@dataclasses.dataclass(frozen=True)
class DenseNetSpec:
  """Hyper-parameters of a DenseNet (torchvision naming)."""

  growth_rate: int = 32
  block_config: tuple[int, ...] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4

  def channels_after(self, num_blocks: int) -> int:
    """Output channels after `num_blocks` blocks (and their transitions)."""
    c = self.num_init_features
    for i in range(num_blocks):
      c += self.block_config[i] * self.growth_rate
      if i != len(self.block_config) - 1:
        c //= 2
    return c


DENSENET_PRESETS: dict[str, DenseNetSpec] = {
    "densenet121": DenseNetSpec(32, (6, 12, 24, 16), 64),
    "densenet161": DenseNetSpec(48, (6, 12, 36, 24), 96),
    "densenet169": DenseNetSpec(32, (6, 12, 32, 32), 64),
    "densenet201": DenseNetSpec(32, (6, 12, 48, 32), 64),
}

# torchvision: nn.init.kaiming_normal_ (fan_in, gain sqrt(2), untruncated).
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
# PyTorch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
_linear_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _linear_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


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


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` (same variables) with PyTorch's training semantics and a
  faster training-mode gradient (`batch_norm_train`).

  Running variance is updated with the unbiased batch variance, as
  `torch.nn.BatchNorm2d` does; normalisation uses the biased one (both as in
  PyTorch). Eval mode is `nnx.BatchNorm`'s.
  """

  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None) -> jax.Array:
    use_running_average = (self.use_running_average if use_running_average is None
                           else use_running_average)
    if use_running_average is None or use_running_average or mask is not None:
      return super().__call__(x, use_running_average, mask=mask)
    y, mean, var = batch_norm_train(x.astype(self.dtype or x.dtype), self.scale[...],
                                    self.bias[...], self.epsilon)
    n = x.size // x.shape[-1]
    m = self.momentum
    self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
    self.var[...] = m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var * n / max(n - 1, 1))
    return y


def _bn(features: int, dtype: Any, rngs: nnx.Rngs) -> BatchNorm:
  return BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs)


def _patches(x: jax.Array, kh: int, kw: int, stride: int, pad: int) -> jax.Array:
  """im2col: (B, Ho, Wo, kh * kw * C) in HWIO-flattened order."""
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (x.shape[1] + 2 * pad - kh) // stride + 1
  wo = (x.shape[2] + 2 * pad - kw) // stride + 1
  return jnp.concatenate([xp[:, i:i + stride * (ho - 1) + 1:stride,
                             j:j + stride * (wo - 1) + 1:stride]
                          for i in range(kh) for j in range(kw)], axis=-1)


def _conv_nhwc(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def stem_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """A convolution whose kernel gradient is an im2col matmul.

  For the 3-channel 7x7 stem, XLA:CPU's convolution-shaped kernel gradient
  is ~4x slower than `patches^T @ dy` (BENCHMARKS.md); the forward pass (and
  so evaluation) keeps the convolution, which is faster there.
  """
  return _conv_nhwc(x, kernel, stride, pad)


def _stem_conv_fwd(x, kernel, stride, pad):
  return _conv_nhwc(x, kernel, stride, pad), (x, kernel)


def _stem_conv_bwd(stride, pad, residuals, dy):
  x, kernel = residuals
  kh, kw, cin, cout = kernel.shape
  cols = _patches(x, kh, kw, stride, pad).reshape(-1, kh * kw * cin)
  dkernel = (cols.T @ dy.reshape(-1, cout)).reshape(kernel.shape).astype(kernel.dtype)
  # Unused (and removed by XLA) when x is the input image, as in training.
  dx = jax.vjp(lambda v: _conv_nhwc(v, kernel, stride, pad), x)[1](dy)[0]
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


class Conv3x3(nnx.Module):
  """The dense layers' 3x3 convolution (parameter as `nnx.Conv`'s `kernel`)."""

  def __init__(self, cin: int, cout: int, *, dtype: Any, ops: str = "auto", rngs: nnx.Rngs):
    self.kernel = nnx.Param(_conv_init(rngs.params(), (3, 3, cin, cout), jnp.float32))
    self.dtype = dtype
    self.ops = resolve_ops(ops)

  def __call__(self, x: jax.Array) -> jax.Array:
    x, kernel = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
    return conv3x3(x, kernel) if self.ops == "gemm" else _conv_nhwc(x, kernel, 1, 1)


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


def max_pool(x: jax.Array, ops: str) -> jax.Array:
  """The stem's 3x3 / stride 2 / pad 1 max pool in the given kernel family."""
  if ops == "gemm":
    return max_pool_3x3_s2(x)
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class StemConv(nnx.Module):
  """The 7x7 / stride 2 stem convolution (parameter as `nnx.Conv`'s `kernel`)."""

  def __init__(self, cin: int, cout: int, *, dtype: Any, ops: str = "auto", rngs: nnx.Rngs):
    self.kernel = nnx.Param(_conv_init(rngs.params(), (7, 7, cin, cout), jnp.float32))
    self.dtype = dtype
    self.ops = resolve_ops(ops)

  def __call__(self, x: jax.Array) -> jax.Array:
    x, kernel = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
    return stem_conv(x, kernel, 2, 3) if self.ops == "gemm" else _conv_nhwc(x, kernel, 2, 3)


class PointwiseConv(nnx.Module):
  """1x1 convolution computed as a 2-D matmul.

  Same parameter as `nnx.Conv` (`kernel` of shape (1, 1, in, out), same
  initialisation), so checkpoints and weight conversion do not change; but
  XLA:CPU differentiates a dot about 10x faster than a 1x1 convolution
  (BENCHMARKS.md), and most of a DenseNet's FLOPs are 1x1 convolutions.
  """

  def __init__(self, cin: int, cout: int, *, dtype: Any, rngs: nnx.Rngs):
    self.kernel = nnx.Param(_conv_init(rngs.params(), (1, 1, cin, cout), jnp.float32))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    cin, cout = self.kernel.shape[2:]
    y = x.astype(self.dtype).reshape(-1, cin) @ self.kernel[0, 0].astype(self.dtype)
    return y.reshape(*x.shape[:-1], cout)


class DenseLayer(nnx.Module):
  """BN-ReLU-Conv1x1 (bottleneck) -> BN-ReLU-Conv3x3 producing `growth_rate` maps."""

  def __init__(self, in_features: int, growth_rate: int, bn_size: int, *,
               dtype: Any, ops: str = "auto", rngs: nnx.Rngs):
    width = bn_size * growth_rate
    self.norm1 = _bn(in_features, dtype, rngs)
    self.conv1 = PointwiseConv(in_features, width, dtype=dtype, rngs=rngs)
    self.norm2 = _bn(width, dtype, rngs)
    self.conv2 = Conv3x3(width, growth_rate, dtype=dtype, ops=ops, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv1(nnx.relu(self.norm1(x)))
    return self.conv2(nnx.relu(self.norm2(y)))


class Transition(nnx.Module):
  """BN-ReLU-Conv1x1 halving channels, then 2x2 average pooling."""

  def __init__(self, in_features: int, out_features: int, *, dtype: Any, rngs: nnx.Rngs):
    self.norm = _bn(in_features, dtype, rngs)
    self.conv = PointwiseConv(in_features, out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(nnx.relu(self.norm(x)))
    return nnx.avg_pool(x, (2, 2), strides=(2, 2))


class DenseBlock(nnx.Module):
  """`num_layers` dense layers, each seeing the concatenation of all before it."""

  def __init__(self, num_layers: int, in_features: int, growth_rate: int, bn_size: int, *,
               dtype: Any, ops: str = "auto", rngs: nnx.Rngs):
    self.layers = nnx.List([
        DenseLayer(in_features + i * growth_rate, growth_rate, bn_size, dtype=dtype, ops=ops,
                   rngs=rngs)
        for i in range(num_layers)
    ])

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers:
      x = jnp.concatenate([x, layer(x)], axis=-1)
    return x


class DenseNet(nnx.Module):
  """DenseNet feature extractor that can stop after any dense block.

  With `num_blocks < len(block_config)` every kept block is followed by its
  transition (the paper's stream: densenet161, 2 blocks -> 384 ch at H/16).
  With all blocks kept, the final BatchNorm (torchvision's `norm5`) and ReLU
  close the network, as in torchvision's forward.
  """

  def __init__(self, spec: DenseNetSpec, num_blocks: int | None = None, *,
               dtype: Any = jnp.float32, ops: str = "auto", rngs: nnx.Rngs):
    total = len(spec.block_config)
    num_blocks = total if num_blocks is None else num_blocks
    if not 1 <= num_blocks <= total:
      raise ValueError(f"num_blocks must be in [1, {total}], got {num_blocks}")
    self.spec = spec
    self.num_blocks = num_blocks
    c = spec.num_init_features
    self.ops = resolve_ops(ops)
    self.conv0 = StemConv(3, c, dtype=dtype, ops=self.ops, rngs=rngs)
    self.norm0 = _bn(c, dtype, rngs)
    blocks, transitions = [], []
    for i in range(num_blocks):
      blocks.append(DenseBlock(spec.block_config[i], c, spec.growth_rate, spec.bn_size,
                               dtype=dtype, ops=self.ops, rngs=rngs))
      c += spec.block_config[i] * spec.growth_rate
      if i != total - 1:
        transitions.append(Transition(c, c // 2, dtype=dtype, rngs=rngs))
        c //= 2
    self.blocks = nnx.List(blocks)
    self.transitions = nnx.List(transitions)
    self.norm5 = _bn(c, dtype, rngs) if num_blocks == total else None
    self.out_features = c

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.norm0(self.conv0(x)))
    x = max_pool(x, self.ops)
    for i, block in enumerate(self.blocks):
      x = block(x)
      if i < len(self.transitions):
        x = self.transitions[i](x)
    if self.norm5 is not None:
      x = nnx.relu(self.norm5(x))
    return x


class Head(nnx.Module):
  """Linear layer to one logit; P(real) = sigmoid(logit)."""

  def __init__(self, in_features: int, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_features, 1, kernel_init=_linear_kernel_init,
                             bias_init=_linear_bias_init(in_features), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear(x.astype(jnp.float32))[..., 0]


def _embed(stream: DenseNet, x: jax.Array) -> jax.Array:
  """Global average pool then sigmoid (the published embedding), in float32."""
  return jax.nn.sigmoid(jnp.mean(stream(x).astype(jnp.float32), axis=(1, 2)))


class TwoStreamDetector(nnx.Module):
  """RGB stream + spectrum stream (no weight sharing), three heads.

  `__call__` takes raw images (uint8 or [0, 1]) and computes both inputs on
  device; `forward_streams` takes already-preprocessed inputs (for parity
  tests and converted checkpoints).
  """

  def __init__(self, spec: DenseNetSpec, num_blocks: int, *, dtype: Any = jnp.float32,
               ops: str = "auto", rngs: nnx.Rngs):
    self.rgb_stream = DenseNet(spec, num_blocks, dtype=dtype, ops=ops, rngs=rngs)
    self.freq_stream = DenseNet(spec, num_blocks, dtype=dtype, ops=ops, rngs=rngs)
    c = self.rgb_stream.out_features
    self.rgb_head = Head(c, rngs=rngs)
    self.freq_head = Head(c, rngs=rngs)
    self.joint_head = Head(2 * c, rngs=rngs)
    self.dtype = dtype

  def forward_streams(self, rgb: jax.Array, freq: jax.Array) -> dict[str, jax.Array]:
    e_rgb = _embed(self.rgb_stream, rgb.astype(self.dtype))
    e_freq = _embed(self.freq_stream, freq.astype(self.dtype))
    return {
        "joint": self.joint_head(jnp.concatenate([e_rgb, e_freq], axis=-1)),
        "rgb": self.rgb_head(e_rgb),
        "freq": self.freq_head(e_freq),
    }

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    return self.forward_streams(spectrum.normalize_rgb(images), spectrum.log_spectrum(images))


class OneStreamDetector(nnx.Module):
  """Baseline: one stream fed the RGB image or its spectrum; one head ("joint")."""

  def __init__(self, spec: DenseNetSpec, num_blocks: int, input_kind: str = "rgb", *,
               dtype: Any = jnp.float32, ops: str = "auto", rngs: nnx.Rngs):
    if input_kind not in ONE_STREAM_INPUTS:
      raise ValueError(f"one_stream input must be one of {ONE_STREAM_INPUTS}, got {input_kind!r}")
    self.input_kind = input_kind
    self.stream = DenseNet(spec, num_blocks, dtype=dtype, ops=ops, rngs=rngs)
    self.head = Head(self.stream.out_features, rngs=rngs)
    self.dtype = dtype

  def forward_streams(self, x: jax.Array) -> dict[str, jax.Array]:
    return {"joint": self.head(_embed(self.stream, x.astype(self.dtype)))}

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    if self.input_kind == "rgb":
      x = spectrum.normalize_rgb(images)
    else:
      x = spectrum.log_spectrum(images)
    return self.forward_streams(x)


def densenet_spec(name_or_spec: str | DenseNetSpec | dict | None = None, **overrides) -> DenseNetSpec:
  """A preset by name (e.g. "densenet161"), optionally with fields overridden."""
  if isinstance(name_or_spec, DenseNetSpec):
    base = name_or_spec
  else:
    name = name_or_spec or "densenet161"
    if name not in DENSENET_PRESETS:
      raise ValueError(f"unknown DenseNet preset {name!r}; choose from {sorted(DENSENET_PRESETS)}")
    base = DENSENET_PRESETS[name]
  overrides = {k: (tuple(v) if k == "block_config" else v) for k, v in overrides.items()
               if v is not None}
  return dataclasses.replace(base, **overrides)


def spec_from_config(model_config: Any) -> DenseNetSpec:
  """The stream's DenseNetSpec of a model config (backbone preset + overrides)."""
  cfg = dict(model_config)
  return densenet_spec(cfg.get("backbone", "densenet161"),
                       growth_rate=cfg.get("growth_rate"),
                       block_config=cfg.get("block_config"),
                       num_init_features=cfg.get("num_init_features"),
                       bn_size=cfg.get("bn_size"))


def create_model(model_config: Any, *, rngs: nnx.Rngs) -> TwoStreamDetector | OneStreamDetector:
  """Builds a detector from a config with fields arch, backbone, num_blocks, input,
  dtype, ops and optional DenseNet overrides (growth_rate, block_config, ...)."""
  cfg = dict(model_config)
  spec = spec_from_config(cfg)
  num_blocks = cfg.get("num_blocks", 2)
  dtype = jnp.dtype(cfg.get("dtype", "float32"))
  ops = cfg.get("ops", "auto")
  arch = cfg.get("arch", "two_stream")
  if arch == "two_stream":
    return TwoStreamDetector(spec, num_blocks, dtype=dtype, ops=ops, rngs=rngs)
  if arch == "one_stream":
    return OneStreamDetector(spec, num_blocks, cfg.get("input", "rgb"), dtype=dtype, ops=ops,
                             rngs=rngs)
  raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")


def count_params(module: nnx.Module) -> int:
  """Number of trainable parameters (nnx.Param leaves), like PyTorch's parameters()."""
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
