"""A configurable DenseNet (Flax NNX), the stream of every detector.

Layout is NHWC. Channel order of every dense concatenation is [input, new],
as in torchvision, so weights convert one-to-one. Initialisation follows
torchvision's DenseNet (Kaiming-normal convs, BN weight 1 / bias 0).
The stem, the 3x3 convolutions and the max pool run in one of two kernel
families with the same parameters and values: "gemm" (`kernels`, fast on
XLA:CPU) or "xla" (XLA's own, cuDNN on GPU); `cmfl_jax.backend` chooses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cmfl_jax.models import kernels

# PyTorch BatchNorm momentum 0.1 == Flax momentum 0.9.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
#: Kernel families (resolved; "auto" is resolved by `cmfl_jax.backend`).
KERNEL_FAMILIES = ("gemm", "xla")


def _check_family(ops: str) -> str:
  if ops not in KERNEL_FAMILIES:
    raise ValueError(f"kernel family must be one of {KERNEL_FAMILIES}, got {ops!r}")
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
    y, mean, var = kernels.batch_norm_train(x.astype(self.dtype or x.dtype), self.scale[...],
                                    self.bias[...], self.epsilon)
    n = x.size // x.shape[-1]
    m = self.momentum
    self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
    self.var[...] = m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var * n / max(n - 1, 1))
    return y


def _bn(features: int, dtype: Any, rngs: nnx.Rngs) -> BatchNorm:
  return BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs)




class Conv3x3(nnx.Module):
  """The dense layers' 3x3 convolution (parameter as `nnx.Conv`'s `kernel`)."""

  def __init__(self, cin: int, cout: int, *, dtype: Any, ops: str = "xla", rngs: nnx.Rngs):
    self.kernel = nnx.Param(_conv_init(rngs.params(), (3, 3, cin, cout), jnp.float32))
    self.dtype = dtype
    self.ops = _check_family(ops)

  def __call__(self, x: jax.Array) -> jax.Array:
    x, kernel = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
    if self.ops == "gemm":
      return kernels.conv3x3(x, kernel)
    return kernels.conv_nhwc(x, kernel, 1, 1)




def max_pool(x: jax.Array, ops: str) -> jax.Array:
  """The stem's 3x3 / stride 2 / pad 1 max pool in the given kernel family."""
  if ops == "gemm":
    return kernels.max_pool_3x3_s2(x)
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class StemConv(nnx.Module):
  """The 7x7 / stride 2 stem convolution (parameter as `nnx.Conv`'s `kernel`)."""

  def __init__(self, cin: int, cout: int, *, dtype: Any, ops: str = "xla", rngs: nnx.Rngs):
    self.kernel = nnx.Param(_conv_init(rngs.params(), (7, 7, cin, cout), jnp.float32))
    self.dtype = dtype
    self.ops = _check_family(ops)

  def __call__(self, x: jax.Array) -> jax.Array:
    x, kernel = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
    if self.ops == "gemm":
      return kernels.stem_conv(x, kernel, 2, 3)
    return kernels.conv_nhwc(x, kernel, 2, 3)


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
               dtype: Any, ops: str = "xla", rngs: nnx.Rngs):
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
               dtype: Any, ops: str = "xla", rngs: nnx.Rngs):
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
               dtype: Any = jnp.float32, ops: str = "xla", rngs: nnx.Rngs):
    total = len(spec.block_config)
    num_blocks = total if num_blocks is None else num_blocks
    if not 1 <= num_blocks <= total:
      raise ValueError(f"num_blocks must be in [1, {total}], got {num_blocks}")
    self.spec = spec
    self.num_blocks = num_blocks
    c = spec.num_init_features
    self.ops = _check_family(ops)
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




def count_params(module_or_params: nnx.Module | Any) -> int:
  """Number of trainable parameters of a module (its nnx.Param leaves) or of a
  parameter state, like PyTorch's `parameters()`."""
  params = module_or_params
  if isinstance(params, nnx.Module):
    params = nnx.state(params, nnx.Param)
  return sum(int(x.size) for x in jax.tree.leaves(params))

