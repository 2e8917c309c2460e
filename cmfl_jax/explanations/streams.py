"""The detector taken apart for attribution: each stream's input, its last
features, and the heads on top, so a map can be taken with respect to the
pixels, to the spectrum the frequency stream reads, or to a stream's features.

`logits(model, stream_inputs(model, x))` equals `model(x)` (tested): the
pieces are the model's own modules, recombined as `detectors._embed` does.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from cmfl_jax.models import detectors, spectrum

#: Stream name -> its input computed from [0, 1] pixels (on device, differentiable).
INPUTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "rgb": spectrum.normalize_rgb, "freq": spectrum.log_spectrum}

Model = detectors.TwoStreamDetector | detectors.OneStreamDetector


def stream_names(model: Model) -> tuple[str, ...]:
  """("rgb", "freq") for two_stream, the one input kind for one_stream."""
  if isinstance(model, detectors.TwoStreamDetector):
    return ("rgb", "freq")
  return (model.input_kind,)


def modules(model: Model) -> dict:
  """Stream name -> its DenseNet."""
  if isinstance(model, detectors.TwoStreamDetector):
    return {"rgb": model.rgb_stream, "freq": model.freq_stream}
  return {model.input_kind: model.stream}


def stream_inputs(model: Model, images: jax.Array) -> dict[str, jax.Array]:
  """Each stream's input from images (uint8 or [0, 1])."""
  x = spectrum.to_unit_range(images)
  return {s: INPUTS[s](x) for s in stream_names(model)}


def features(model: Model, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The last feature map `[B, h, w, C]` (before pooling) of each stream in `inputs`."""
  return {s: m(inputs[s].astype(model.dtype)) for s, m in modules(model).items() if s in inputs}


def head_logits(model: Model, feats: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The heads' logits of P(real) from the streams' feature maps."""
  emb = {s: jax.nn.sigmoid(jnp.mean(f.astype(jnp.float32), axis=(1, 2))) for s, f in feats.items()}
  if isinstance(model, detectors.TwoStreamDetector):
    return {"joint": model.joint_head(jnp.concatenate([emb["rgb"], emb["freq"]], axis=-1)),
            "rgb": model.rgb_head(emb["rgb"]), "freq": model.freq_head(emb["freq"])}
  return {"joint": model.head(emb[model.input_kind])}


def logits(model: Model, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The heads' logits from the streams' inputs."""
  return head_logits(model, features(model, inputs))
