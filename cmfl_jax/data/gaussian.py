"""The sampled Gaussian of every blur in the data code: the augmentation and
robustness blur (`ops.gaussian_blur`, scipy.ndimage semantics) and the
embedded benchmark's camera, generator and texture filters
(`synthetic.simulate`, `synthetic.v2`). One definition, so that "a blur of
sigma s" means the same weights everywhere. NumPy only."""

from __future__ import annotations

import numpy as np

#: sigma is floored at this: sigma -> 0 gives the unit impulse, never 0/0.
MIN_SIGMA = 1e-6


def gaussian_taps(sigma: float, radius: int | None = None) -> np.ndarray:
  """1-D taps exp(-x^2 / (2 sigma^2)) at the integers x = -radius..radius,
  normalised to sum 1 (float64). radius None: scipy.ndimage's rule for its
  default truncate=4, int(4 sigma + 0.5), so that `ops.gaussian_blur` weighs
  like gaussian_filter; the benchmark passes its radii explicitly (its pixels
  are pinned by digests)."""
  if radius is None:
    radius = int(4.0 * sigma + 0.5)
  x = np.arange(-radius, radius + 1)
  t = np.exp(-0.5 * np.square(x / max(sigma, MIN_SIGMA)))
  return t / t.sum()
