"""The detectors: one/two-stream DenseNets with sigmoid embeddings and heads,
and their typed configuration (`ModelConfig`), built once from `config.model`.

Every head outputs a logit of P(real) (label 1 = bona fide). A two_stream
model built with `num_sources > 0` also has the attribution head: logits over
the sources (bona fide and the training generators) under `SOURCE`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from cmfl_jax import backend
from cmfl_jax.models import spectrum
from cmfl_jax.models.densenet import DenseNet, DenseNetSpec, densenet_spec

ONE_STREAM_INPUTS = ("rgb", "freq")
#: The attribution head's output: logits [B, num_sources], not a P(real) head.
SOURCE = "source"


def binary_heads(outputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The P(real) heads' logits of a model's outputs (without `SOURCE`)."""
  return {k: v for k, v in outputs.items() if k != SOURCE}

# PyTorch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
_linear_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _linear_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


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
               ops: str = "xla", num_sources: int = 0, rngs: nnx.Rngs):
    self.rgb_stream = DenseNet(spec, num_blocks, dtype=dtype, ops=ops, rngs=rngs)
    self.freq_stream = DenseNet(spec, num_blocks, dtype=dtype, ops=ops, rngs=rngs)
    c = self.rgb_stream.out_features
    self.rgb_head = Head(c, rngs=rngs)
    self.freq_head = Head(c, rngs=rngs)
    self.joint_head = Head(2 * c, rngs=rngs)
    if num_sources:  # absent otherwise: the parameters and checkpoints stay as without it
      self.source_head = nnx.Linear(2 * c, num_sources, kernel_init=_linear_kernel_init,
                                    bias_init=_linear_bias_init(2 * c), rngs=rngs)
    self.dtype = dtype

  def forward_streams(self, rgb: jax.Array, freq: jax.Array) -> dict[str, jax.Array]:
    e_rgb = _embed(self.rgb_stream, rgb.astype(self.dtype))
    e_freq = _embed(self.freq_stream, freq.astype(self.dtype))
    fused = jnp.concatenate([e_rgb, e_freq], axis=-1)
    out = {"joint": self.joint_head(fused), "rgb": self.rgb_head(e_rgb),
           "freq": self.freq_head(e_freq)}
    if hasattr(self, "source_head"):
      out[SOURCE] = self.source_head(fused)
    return out

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    return self.forward_streams(spectrum.normalize_rgb(images), spectrum.log_spectrum(images))


class OneStreamDetector(nnx.Module):
  """Baseline: one stream fed the RGB image or its spectrum; one head ("joint")."""

  def __init__(self, spec: DenseNetSpec, num_blocks: int, input_kind: str = "rgb", *,
               dtype: Any = jnp.float32, ops: str = "xla", rngs: nnx.Rngs):
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


#: Architectures by name -> builder from a ModelConfig.
ARCHITECTURES = {
    "two_stream": lambda m, rngs: TwoStreamDetector(m.spec, m.num_blocks, dtype=m.dtype,
                                                    ops=m.ops, num_sources=m.num_sources,
                                                    rngs=rngs),
    "one_stream": lambda m, rngs: OneStreamDetector(m.spec, m.num_blocks, m.input, dtype=m.dtype,
                                                    ops=m.ops, rngs=rngs),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """`config.model` as typed, validated values (built once, at the boundary)."""

  arch: str = "two_stream"
  input: str = "rgb"                         # one_stream only
  spec: DenseNetSpec = densenet_spec("densenet161")
  num_blocks: int = 2
  dtype: Any = jnp.float32                   # compute dtype
  ops: str = "gemm"                          # resolved kernel family: "gemm" | "xla"
  cpu_matmul: str = "eigen"                  # see cmfl_jax.backend
  pretrained: str = ""
  num_sources: int = 0                       # attribution head width (0: none; two_stream)

  @classmethod
  def from_config(cls, model: Mapping[str, Any], platform: str | None = None,
                  num_sources: int = 0) -> "ModelConfig":
    """Validates `config.model`; "auto" kernels resolve for `platform`
    (default: JAX's default backend); `num_sources` from `attribution.classes`."""
    cfg = dict(model)
    arch = cfg.get("arch", cls.arch)
    if arch not in ARCHITECTURES:
      raise ValueError(f"model.arch must be one of {tuple(ARCHITECTURES)}, got {arch!r}")
    input_kind = cfg.get("input", cls.input)
    if input_kind not in ONE_STREAM_INPUTS:
      raise ValueError(f"model.input must be one of {ONE_STREAM_INPUTS}, got {input_kind!r}")
    spec = densenet_spec(cfg.get("backbone", "densenet161"),
                         growth_rate=cfg.get("growth_rate"),
                         block_config=cfg.get("block_config"),
                         num_init_features=cfg.get("num_init_features"),
                         bn_size=cfg.get("bn_size"))
    num_blocks = int(cfg.get("num_blocks", cls.num_blocks))
    if not 1 <= num_blocks <= len(spec.block_config):
      raise ValueError(f"model.num_blocks must be in [1, {len(spec.block_config)}], "
                       f"got {num_blocks}")
    try:
      dtype = jnp.dtype(cfg.get("dtype", "float32"))
    except TypeError:
      raise ValueError(f"model.dtype {cfg.get('dtype')!r} is not a dtype (use float32 or "
                       "bfloat16)") from None
    on = platform or backend.platform()
    ops = backend.kernel_family(cfg.get("ops", "auto"), on)
    cpu_matmul = cfg.get("cpu_matmul", cls.cpu_matmul)
    if cpu_matmul not in backend.CPU_MATMUL:
      raise ValueError(f"model.cpu_matmul must be one of {backend.CPU_MATMUL}, got "
                       f"{cpu_matmul!r}")
    if num_sources and arch != "two_stream":
      raise ValueError("attribution needs model.arch='two_stream' (the head reads the fused "
                       f"embedding of both streams), got {arch!r}")
    return cls(arch, input_kind, spec, num_blocks, dtype, ops, cpu_matmul,
               str(cfg.get("pretrained") or ""), int(num_sources))


def create_model(model: ModelConfig | Mapping[str, Any], *, rngs: nnx.Rngs
                 ) -> TwoStreamDetector | OneStreamDetector:
  """The detector of a `ModelConfig` (a plain mapping is validated first)."""
  if not isinstance(model, ModelConfig):
    model = ModelConfig.from_config(model)
  return ARCHITECTURES[model.arch](model, rngs)
