"""The data code's one Gaussian (`cmfl_jax.data.gaussian`): scipy's weights
for the augmentation blur, an impulse as sigma -> 0, and the same function
behind the blur and the embedded benchmark."""

import numpy as np
import pytest

from cmfl_jax.data import gaussian


@pytest.mark.parametrize("sigma", [0.1, 0.13, 0.4, 0.63, 1.0, 1.37, 1.7, 2.0])
def test_default_radius_and_weights_are_scipys(sigma):
  from scipy.ndimage import gaussian_filter1d
  taps = gaussian.gaussian_taps(sigma)
  radius = int(4.0 * sigma + 0.5)
  assert taps.shape == (2 * radius + 1,) and taps.sum() == pytest.approx(1.0, abs=1e-15)
  impulse = np.zeros(2 * radius + 11)
  impulse[radius + 5] = 1.0
  want = gaussian_filter1d(impulse, sigma, mode="constant", truncate=4.0)[5:-5]
  np.testing.assert_allclose(taps, want, rtol=1e-12, atol=1e-300)


def test_explicit_radius_and_sigma_zero_give_an_impulse():
  np.testing.assert_array_equal(gaussian.gaussian_taps(0.0, 3), [0, 0, 0, 1, 0, 0, 0])
  taps = gaussian.gaussian_taps(1.0, 2)
  assert taps.shape == (5,) and np.all(np.diff(taps[:3]) > 0) and taps[0] == taps[-1]


def test_the_blur_and_the_benchmark_share_the_definition():
  from cmfl_jax.data import ops
  from cmfl_jax.data.synthetic import simulate
  assert simulate.gaussian_taps is gaussian.gaussian_taps
  assert ops.gaussian is gaussian


def test_bit_identical_to_the_two_definitions_it_replaces():
  """ops._gaussian_taps and simulate.gaussian_taps as they were before the
  merge (commit daec2ce): the blur's weights and the benchmark's pixels stay."""
  def former_ops(sigma):
    r = np.arange(-int(4.0 * sigma + 0.5), int(4.0 * sigma + 0.5) + 1)
    k = np.exp(-0.5 * np.square(r / sigma))
    return k / k.sum()

  def former_simulate(sigma, radius):
    r = np.arange(-radius, radius + 1)
    t = np.exp(-0.5 * (r / max(sigma, 1e-6)) ** 2)
    return t / t.sum()

  rng = np.random.default_rng(0)
  sigmas = np.concatenate([rng.uniform(1e-7, 2.0, 500), np.linspace(0.0, 2.0, 201)[1:]])
  for sigma in sigmas.tolist():
    np.testing.assert_array_equal(gaussian.gaussian_taps(sigma), former_ops(sigma))
    for radius in (1, 2, 3):
      np.testing.assert_array_equal(gaussian.gaussian_taps(sigma, radius),
                                    former_simulate(sigma, radius))
  for radius in (1, 2, 3):  # chroma_nr may be 0: an impulse
    np.testing.assert_array_equal(gaussian.gaussian_taps(0.0, radius), former_simulate(0.0, radius))
