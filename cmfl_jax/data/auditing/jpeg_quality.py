"""JPEG quality from the quantisation table: which libjpeg quality setting wrote
a file (exactly, for IJG-scaled tables) or the nearest one (for own tables),
read from the header alone: no pixel is decoded."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# ITU-T T.81 Annex K.1 luminance table, natural (row-major) order: libjpeg's base table.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.int64)
# Zigzag position -> natural index (older Pillow versions exposed tables in zigzag order).
_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48,
    41, 34, 27, 20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23,
    30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63])


def ijg_luma_table(quality: int) -> np.ndarray:
  """The luminance table libjpeg (and so PIL) writes for `quality` (jpeg_set_quality
  with force_baseline): standard table scaled by 5000/q below 50, 200 - 2q above."""
  q = min(max(int(quality), 1), 100)
  scale = 5000 // q if q < 50 else 200 - 2 * q
  return np.clip((_STD_LUMA * scale + 50) // 100, 1, 255)


_IJG_TABLES = np.stack([ijg_luma_table(q) for q in range(1, 101)])  # row q-1
_IJG_LOG = np.log(_IJG_TABLES.astype(np.float64))


def estimate_jpeg_quality(luma_table: Sequence[int]) -> tuple[int, bool]:
  """(quality, exact) for a 64-entry luminance quantisation table.

  Inverts the IJG scaling by matching against all 100 scaled standard tables: exact is
  True when one matches entry for entry (libjpeg, PIL, OpenCV, ...). Encoders with own
  tables (cameras, Photoshop) get the nearest quality in log space and exact=False.
  """
  t = np.asarray(luma_table, np.int64).ravel()
  if t.size != 64:
    raise ValueError(f"a quantisation table has 64 entries, got {t.size}")
  best_err, best_q = math.inf, 50
  for order in (None, _ZIGZAG):
    tables = _IJG_TABLES if order is None else _IJG_TABLES[:, order]
    hit = np.flatnonzero((tables == t).all(axis=1))
    if hit.size:
      return int(hit[0]) + 1, True
    logs = _IJG_LOG if order is None else _IJG_LOG[:, order]
    err = np.abs(logs - np.log(np.maximum(t, 1))).sum(axis=1)
    k = int(np.argmin(err))
    if err[k] < best_err:
      best_err, best_q = float(err[k]), k + 1
  return best_q, False
