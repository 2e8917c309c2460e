"""Signed evidence for the page and the pictures: where in the face, and in
which frequencies, the model found evidence for "synthetic" (> 0) or for
"real" (< 0). One backward pass per batch, cheap enough for every request.

* pixels: Grad-CAM of the RGB stream without its ReLU and unsigned by the
  decision (Selvaraju et al. 2017's weights times the last features, upsampled
  bilinearly), so both directions show;
* frequencies: gradient x (spectrum - its isotropic trend) on the frequency
  stream's input (`saliency.power_law`, the integrated-gradients baseline,
  taken at one point), per bin of the fftshifted grid;
* `pattern`: what the most weighted frequencies draw in the image itself
  (the image's own Fourier coefficients at those bins, inverse-transformed),
  so the frequency evidence can be seen on the face;
* `profile`: the frequency evidence per ring, from coarse to fine detail.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cmfl_jax.explanations import radial, saliency, streams
from cmfl_jax.models import spectrum


def maps(model: streams.Model, images: jax.Array, head: str = "joint") -> dict[str, jax.Array]:
  """{"pixels": [B, H, W], "frequencies": [B, H, W]} (the streams the model
  has), signed: > 0 evidence for synthetic, < 0 for real."""
  x = spectrum.to_unit_range(images)
  inputs = streams.stream_inputs(model, x)
  names = tuple(inputs)
  mods = streams.modules(model)
  feats = {s: mods[s](inputs[s].astype(model.dtype)) for s in names if s != "freq"}

  def logit(parts):
    f = {**parts["feats"]}
    if "freq" in names:
      f["freq"] = mods["freq"](parts["freq"].astype(model.dtype))
    return -jnp.sum(streams.head_logits(model, f)[head])  # minus: > 0 toward synthetic

  grads = jax.grad(logit)({"feats": feats, "freq": inputs.get("freq", jnp.zeros(()))})
  b, h, w = x.shape[:3]
  out = {}
  if "rgb" in feats:
    a, g = feats["rgb"].astype(jnp.float32), grads["feats"]["rgb"].astype(jnp.float32)
    cam = jnp.sum(jnp.mean(g, axis=(1, 2), keepdims=True) * a, axis=-1)
    out["pixels"] = jax.image.resize(cam, (b, h, w), "bilinear")
  if "freq" in names:
    s = inputs["freq"]
    out["frequencies"] = jnp.sum(grads["freq"] * (s - saliency.power_law(s)), axis=-1)
  return out


def pattern(image: np.ndarray, frequencies: np.ndarray, share: float = 0.02) -> np.ndarray:
  """`[H, W]` in [-1, 1]: the grey image's detail at the `share` of spectrum
  bins with the largest |evidence| (and their mirror bins), scaled to its
  largest magnitude; DC is left out."""
  grey = np.asarray(image, np.float64).mean(-1)
  coeffs = np.fft.fftshift(np.fft.fft2(grey - grey.mean()))
  weight = np.abs(np.asarray(frequencies, np.float64))
  h, w = weight.shape
  weight[h // 2, w // 2] = 0
  k = max(4, int(share * h * w))
  keep = np.zeros(h * w, bool)
  keep[np.argsort(weight.ravel())[-k:]] = True
  keep = keep.reshape(h, w)
  keep |= np.roll(np.flip(keep, (0, 1)), (1 - h % 2, 1 - w % 2), (0, 1))  # conjugate bins
  drawn = np.real(np.fft.ifft2(np.fft.ifftshift(np.where(keep, coeffs, 0))))
  top = float(np.max(np.abs(drawn)))
  return drawn / top if top > 0 else drawn


def profile(frequencies: np.ndarray, bins: int = radial.DEFAULT_BINS) -> dict[str, list]:
  """Mean signed frequency evidence per ring: {"radius": ring centres as a
  share of the finest detail (1 = Nyquist, the border), "evidence": means}."""
  edges = radial.ring_edges(bins)
  means = radial.profile(np.asarray(frequencies), bins)
  keep = np.isfinite(means)
  centres = 0.5 * (edges[1:] + edges[:-1])
  return {"radius": [round(float(c), 3) for c in centres[keep]],
          "evidence": [float(v) for v in means[keep]]}
