"""Grad-CAM (Selvaraju et al. 2017) from each stream's last features: a
coarse map (H/16 at the paper's depth) of where in the image, and where on
the spectrum grid, the features that decided lie.

The class is the model's decision: the gradient of the joint logit is signed
by the logit, so the map shows the evidence for "bona fide" on images scored
real and for "synthetic" on images scored fake.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cmfl_jax.explanations import streams


def gradcam(model: streams.Model, images: jax.Array, head: str = "joint"
            ) -> dict[str, jax.Array]:
  """{stream: [B, H, W]} maps (ReLU, bilinear upsampling to the input grid:
  pixels for "rgb", the fftshifted spectrum for "freq")."""
  inputs = streams.stream_inputs(model, images)
  feats = streams.features(model, inputs)
  sign = jnp.sign(jax.lax.stop_gradient(streams.head_logits(model, feats)[head]))
  grads = jax.grad(lambda f: jnp.sum(sign * streams.head_logits(model, f)[head]))(feats)
  b, h, w = images.shape[:3]
  out = {}
  for s, a in feats.items():
    weights = jnp.mean(grads[s].astype(jnp.float32), axis=(1, 2), keepdims=True)
    cam = jax.nn.relu(jnp.sum(weights * a.astype(jnp.float32), axis=-1))
    out[s] = jax.image.resize(cam, (b, h, w), "bilinear")
  return out
