"""Is a verdict stable under the mild post-processing a bona fide image goes
through anyway? Each image is also scored after every condition of
`CONDITIONS` (the robustness conditions of `data.ops`: a JPEG save at
quality 95, a 0.9x down-and-up resize), applied to the model's input; a
verdict that changes under any of them is `unsure`."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from cmfl_jax import verdicts
from cmfl_jax.data import ops

CONDITIONS = verdicts.STABILITY


def check_conditions(conditions: Sequence[str]) -> tuple[str, ...]:
  """Validated condition names (ValueError naming the bad one)."""
  for c in conditions:
    if ops.parse_condition(c)[0] == "none":
      raise ValueError("a stability condition cannot be 'none'")
  return tuple(conditions)


def perturbed(images: np.ndarray, condition: str) -> np.ndarray:
  """uint8 images (N, H, W, 3) after one condition (deterministic)."""
  seed = tf.constant([0, 0], tf.int32)
  return np.stack([np.asarray(ops.postprocess(tf.constant(img), condition, seed))
                   for img in images]) if len(images) else images


def scores_under(images: np.ndarray, score: Callable[[np.ndarray], np.ndarray],
                 conditions: Sequence[str]) -> dict[str, np.ndarray]:
  """condition -> scores of the perturbed images."""
  return {c: np.asarray(score(perturbed(images, c))) for c in conditions}


def unstable(score: float, under: dict[str, float], cut: float) -> str | None:
  """The reason the verdict at threshold `cut` flips, or None if stable."""
  side = score >= cut
  flipped = [f"{c} ({s:.3f})" for c, s in under.items() if (s >= cut) != side]
  if not flipped:
    return None
  return f"verdict changes after {', '.join(flipped)}"
