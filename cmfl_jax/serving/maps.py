"""Explanations for the page: per image, the face with its signed evidence
laid over it (`explanations.evidence`: red for synthetic, blue for real, the
page's colours), the image-space pattern of the frequencies the model weighed
most, and the radial profile of the frequency evidence. One backward pass per
batch (the cost per request is in BENCHMARKS.md)."""

from __future__ import annotations

import base64
import io
from typing import Any, Callable

import numpy as np

#: Side of the pictures sent to the page, in pixels.
SHOWN = 192
#: RGB of evidence for synthetic and for real (the page's verdict colours).
SYNTHETIC_RGB = (192, 57, 43)
REAL_RGB = (33, 102, 172)


def _png(rgb: np.ndarray) -> str:
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(rgb).save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _resized(array: np.ndarray, resample: str = "bilinear") -> np.ndarray:
  from PIL import Image
  method = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[resample]
  if array.dtype != np.uint8:
    return np.asarray(Image.fromarray(array.astype(np.float32), "F").resize((SHOWN, SHOWN),
                                                                            method))
  return np.asarray(Image.fromarray(array).resize((SHOWN, SHOWN), method))


def overlay(image: np.ndarray, evidence: np.ndarray) -> tuple[np.ndarray, float]:
  """uint8 `[SHOWN, SHOWN, 3]`: the faded grey face, red where `evidence` > 0
  (synthetic), blue where < 0 (real), opacity growing with |evidence| scaled
  to its largest magnitude; and that magnitude."""
  grey = _resized(np.clip(image, 0, 255).astype(np.uint8)).astype(np.float32).mean(-1,
                                                                                keepdims=True)
  base = 80 + 0.6 * grey  # faded, so the colours read on dark and light faces
  top = float(np.max(np.abs(evidence)))
  v = _resized(evidence / top if top > 0 else np.zeros_like(evidence))[..., None]
  colour = np.where(v > 0, np.asarray(SYNTHETIC_RGB, np.float32), np.asarray(REAL_RGB, np.float32))
  alpha = 0.85 * np.clip(np.abs(v), 0, 1)
  return np.clip(base * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8), top


def pattern_picture(drawn: np.ndarray) -> np.ndarray:
  """uint8 grey `[SHOWN, SHOWN, 3]` of a pattern in [-1, 1] (mid-grey = 0)."""
  grey = np.clip(128 + 127 * drawn, 0, 255).astype(np.uint8)
  return np.repeat(_resized(grey, "nearest")[..., None], 3, -1)


def explain_one(image: np.ndarray, found: dict[str, np.ndarray]) -> dict[str, Any]:
  """The page's explanation of one image from `evidence.maps` of it."""
  from cmfl_jax.explanations import evidence
  out: dict[str, Any] = {}
  if "pixels" in found:
    picture, _ = overlay(image, found["pixels"])
    out["overlay_png"] = _png(picture)
  if "frequencies" in found:
    out["pattern_png"] = _png(pattern_picture(evidence.pattern(image, found["frequencies"])))
    out["profile"] = evidence.profile(found["frequencies"])
  return out


def explainer(restored, shapes: tuple[int, ...]) -> Callable[[np.ndarray], list[dict[str, Any]]]:
  """uint8 images -> the page's explanation of each (`explain_one`) from a
  checkpoint already restored by `scoring.model.load_model`, compiled for the
  batch `shapes` on its first call."""
  import jax
  from flax import nnx
  from cmfl_jax.explanations import evidence
  from cmfl_jax.scoring import explain_files, model as scoring_model
  loaded = explain_files.from_state(restored.config, restored.state, restored.mesh,
                                    int(restored.meta["step"]))
  graphdef, state = nnx.split(loaded.model)
  compiled = jax.jit(lambda state, images: evidence.maps(nnx.merge(graphdef, state), images))

  def call(images: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in jax.device_get(compiled(state, images)).items()}

  compiled_for: list = []  # compiled on first use (`ScoringModel.warm_up`)

  def run(images: np.ndarray) -> list[dict[str, Any]]:
    if not compiled_for:
      compiled_for.append(scoring_model.padded_batches(call, shapes,
                                                       int(loaded.config.data.image_size)))
    found = compiled_for[0](images)
    return [explain_one(images[i], {k: v[i] for k, v in found.items()})
            for i in range(len(images))]

  return run
