"""Explanation maps for the page (`serve --explain`): Grad-CAM of both
streams (`cmfl_jax.explanations.gradcam`, one backward pass per batch:
cheap enough per request, where integrated gradients are not), as PNG data
URIs the page shows under "Where the model looked"."""

from __future__ import annotations

import base64
import io
from typing import Callable

import numpy as np

#: The page shows each map at this size (nearest-neighbour: the map's cells stay visible).
SHOWN = 128


def to_data_uri(heat: np.ndarray) -> str:
  """A [H, W] map (>= 0) as an 'inferno' PNG, scaled to its maximum."""
  from matplotlib import colormaps
  from PIL import Image
  top = float(np.max(heat))
  unit = heat / top if top > 0 else np.zeros_like(heat)
  rgb = (colormaps["inferno"](unit)[..., :3] * 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(rgb).resize((SHOWN, SHOWN), Image.NEAREST).save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def explainer(restored, batch_size: int) -> Callable[[np.ndarray], list[dict[str, str]]]:
  """uint8 images -> [{"rgb_png", "freq_png"}] (the streams the model has) of
  a checkpoint already restored by `scoring.model.load_model`, compiled for one
  padded batch shape before this returns."""
  import jax
  from cmfl_jax.explanations import saliency
  from cmfl_jax.scoring import explain_files, model as scoring_model
  loaded = explain_files.from_state(restored.config, restored.state, restored.mesh,
                                    int(restored.meta["step"]))
  compiled = saliency.compile_method(loaded.model, "gradcam")

  def call(images: np.ndarray) -> dict[str, np.ndarray]:
    maps = jax.device_get(compiled(images))
    return {k: np.asarray(maps[k]) for k in ("rgb", "freq") if k in maps}

  maps = scoring_model.padded_batches(call, batch_size, int(loaded.config.data.image_size))

  def run(images: np.ndarray) -> list[dict[str, str]]:
    found = maps(images)
    return [{f"{k}_png": to_data_uri(v[i]) for k, v in found.items()} for i in range(len(images))]

  return run
