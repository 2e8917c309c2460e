"""Radial profiles on the fftshifted grid (DC at the centre, Nyquist at the
border): which spatial frequencies, regardless of orientation, a map weights."""

from __future__ import annotations

import numpy as np

#: Rings of a profile, over radius / Nyquist in [0, sqrt(2)] (corners included).
DEFAULT_BINS = 16


def radius(h: int, w: int) -> np.ndarray:
  """Radius / Nyquist of every bin of an `h x w` fftshifted grid (1 at the border)."""
  i = (np.arange(h) - h // 2) / (h / 2)
  j = (np.arange(w) - w // 2) / (w / 2)
  return np.sqrt(i[:, None] ** 2 + j[None, :] ** 2)


def ring_edges(bins: int = DEFAULT_BINS) -> np.ndarray:
  return np.linspace(0.0, np.sqrt(2.0), bins + 1)


def profile(grid: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
  """Mean of `grid` (`[..., H, W]`) over each ring; `[..., bins]` (NaN for an empty ring)."""
  grid = np.asarray(grid, np.float64)
  h, w = grid.shape[-2:]
  ring = np.clip(np.digitize(radius(h, w), ring_edges(bins)) - 1, 0, bins - 1).ravel()
  flat = grid.reshape(grid.shape[:-2] + (-1,))
  counts = np.bincount(ring, minlength=bins)
  sums = np.stack([np.bincount(ring, weights=v, minlength=bins)
                   for v in flat.reshape(-1, flat.shape[-1])])
  with np.errstate(invalid="ignore", divide="ignore"):
    out = sums / counts
  return out.reshape(grid.shape[:-2] + (bins,))


def magnitude(attribution: np.ndarray) -> np.ndarray:
  """|attribution| summed over colour channels: `[..., H, W, 3] -> [..., H, W]`
  (maps without channels are taken as they are)."""
  a = np.abs(np.asarray(attribution, np.float32))
  return a.sum(-1) if a.ndim >= 3 and a.shape[-1] == 3 else a
