"""Photographs as model inputs: faces detected and aligned as
`cmfl_jax.align` does, one row per face (box, detection score, framing), each
cropped to the model's input."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from cmfl_jax.data import ops


def model_input(face, geometry: ops.Geometry) -> np.ndarray:
  """An aligned face's crop resized and cropped to the model's input."""
  return np.asarray(ops.resize_and_crop(tf.constant(face.crop), geometry))


def aligned_faces(path: str, options, geometry: ops.Geometry) -> list[dict]:
  """Rows for the faces of one photograph (detected and aligned as
  `cmfl_jax.align` does), each with its model input; one "no face" row if none.
  A face enlarged more than `options.max_upscale` times to the model's input
  carries "unsupported" (its verdict is unsure)."""
  from cmfl_jax.data import aligned_crops
  result = aligned_crops.align_image(path, options)
  if not result:
    return [{"path": path, "error": f"no face: {result.reason}", "faces_found": 0}]
  rows = []
  for k, face in enumerate(result):
    rows.append({"path": path if len(result) == 1 else f"{path}#{k}",
                 "image": model_input(face, geometry),
                 "face_box": " ".join(f"{v:.1f}" for v in face.box),
                 "face_score": face.score, "faces_found": face.faces_found,
                 "framing": face.framing,
                 "unsupported": aligned_crops.too_small(face, geometry.size, options.max_upscale)})
  return rows


def face_rows(paths: Sequence[str], options, geometry: ops.Geometry) -> Iterator[dict]:
  for path in paths:
    try:
      yield from aligned_faces(path, options, geometry)
    except ImportError:
      raise
    except Exception as e:  # noqa: BLE001 - report every unreadable file, keep going
      yield {"path": path, "error": f"error: {e}"}
