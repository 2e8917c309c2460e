"""The TensorFlow SavedModel, via jax2tf with native serialization.

Native serialization (the only jax2tf mode left in current JAX) embeds the
same StableHLO as the `jax.export` artifact in one `XlaCallModule` op, so
both artifacts compute exactly the same program, including the FFT and the
percentile sort of the spectrum, which have no faithful TF-op rewrite. The
signature `serving_default` takes `images`, uint8 [batch, H, W, 3], any batch
size, and returns a dict of float32 [batch] tensors (with the attribution
head also `source_probs` float32 [batch, classes] and `generator_index`
int32 [batch]); loading needs TensorFlow only (no JAX, no this project),
and TF Serving serves it as it serves any SavedModel with XLA ops.
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf
from jax.experimental import jax2tf

DIRNAME = "saved_model"
SIGNATURE = "serving_default"
INPUT = "images"


def write(serve: Callable, image_size: int, path: str, platforms: Sequence[str]) -> None:
  """Converts `serve` and saves it at `path` with the `serving_default` signature."""
  converted = jax2tf.convert(serve, polymorphic_shapes=[f"(b, {image_size}, {image_size}, 3)"],
                             native_serialization_platforms=tuple(platforms),
                             with_gradient=False)
  module = tf.Module()

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name=INPUT)])
  def serving_default(images):
    return converted(images)

  module.serving_default = serving_default
  tf.saved_model.save(module, path, signatures={SIGNATURE: serving_default})


def signature_of(path: str) -> dict:
  """{"inputs": {name: (dtype, shape)}, "outputs": {...}} of the saved signature
  (what `saved_model_cli show` prints), read back with TensorFlow."""
  fn = tf.saved_model.load(path).signatures[SIGNATURE]
  spec = lambda s: (s.dtype.name, s.shape.as_list())  # noqa: E731
  return {"inputs": {k: spec(v) for k, v in fn.structured_input_signature[1].items()},
          "outputs": {k: spec(v) for k, v in fn.structured_outputs.items()}}
