"""Scoring with an exported directory (`predict --model=OUT`).

The `jax.export` artifact is used where JAX is importable (it needs nothing
else), the SavedModel otherwise; the input geometry and the training config
come from the model card.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import ml_collections
import numpy as np

from cmfl_jax.exporting import card, jax_export, savedmodel
from cmfl_jax.exporting.errors import ExportError


@dataclasses.dataclass(frozen=True)
class Artifact:
  """A loaded export: its card, training config and batch function."""

  card: dict
  config: ml_collections.ConfigDict
  format: str                                         # "jax_exported" | "saved_model"
  call: Callable[[np.ndarray], dict[str, np.ndarray]]  # uint8 images -> outputs


def read_card(directory: str) -> dict:
  """model_card.json of an export; ExportError if `directory` is not one."""
  path = os.path.join(directory, card.JSON_NAME)
  if not os.path.isfile(path):
    raise ExportError(f"{directory} is not an exported model (no {card.JSON_NAME}; "
                      "make one with python -m cmfl_jax.export)")
  try:
    with open(path) as f:
      found = json.load(f)
  except (OSError, ValueError) as e:
    raise ExportError(f"{path} cannot be read: {str(e).splitlines()[0]}") from None
  if not isinstance(found, dict) or found.get("format") != card.FORMAT:
    raise ExportError(f"{path} is not a {card.FORMAT} model card")
  return found


def load(directory: str) -> Artifact:
  """The export at `directory`, ready to score; ExportError if it cannot be read."""
  found = read_card(directory)
  config = ml_collections.ConfigDict(found["config"])
  try:
    import jax
  except ImportError:
    jax = None
  path = os.path.join(directory, jax_export.FILENAME)
  if jax is not None and os.path.isfile(path):
    try:
      exported = jax_export.read(path)
    except Exception as e:  # noqa: BLE001 - a damaged flatbuffer raises many types
      raise ExportError(f"{path} cannot be read: {(str(e) or type(e).__name__).splitlines()[0]}"
                        ) from None
    return Artifact(found, config, "jax_exported", lambda images: {
        k: np.asarray(v) for k, v in jax.device_get(exported.call(images)).items()})
  import tensorflow as tf
  fn = tf.saved_model.load(os.path.join(directory, savedmodel.DIRNAME)).signatures[
      savedmodel.SIGNATURE]
  return Artifact(found, config, "saved_model", lambda images: {
      k: v.numpy() for k, v in fn(**{savedmodel.INPUT: tf.constant(images)}).items()})
