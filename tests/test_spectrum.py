"""The on-device spectrum and normalisation against a float64 NumPy transcription
of REFERENCE.md (the official code's `rgb_to_fft_tensor_filter_with_percentile`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmfl_jax.models import spectrum


def reference_spectrum(image_uint8: np.ndarray) -> np.ndarray:
  """Float64 transcription of the published per-channel formula, HWC in/out."""
  im = image_uint8.astype(np.float64) / 255.0
  out = np.empty_like(im)
  for c in range(im.shape[-1]):
    f = np.log(np.abs(np.fft.fft2(im[:, :, c])) + 1e-3)
    lo, hi = np.percentile(f, 5), np.percentile(f, 95)
    f = 2 * ((f - lo) / (hi - lo) - 0.5)
    out[:, :, c] = np.fft.fftshift(np.clip(f, -1, 1))
  return out


def _natural_images(rng, n, h, w):
  """Smooth 1/f-like images with texture, so spectra look like real photos."""
  fy = np.fft.fftfreq(h)[:, None]
  fx = np.fft.fftfreq(w)[None, :]
  amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
  imgs = []
  for _ in range(n):
    chans = []
    for _ in range(3):
      phase = rng.uniform(0, 2 * np.pi, (h, w))
      x = np.real(np.fft.ifft2(amp * np.exp(1j * phase)))
      x = (x - x.min()) / (x.max() - x.min())
      chans.append(x)
    imgs.append(np.stack(chans, -1))
  return (np.stack(imgs) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("shape", [(2, 32, 32), (1, 24, 40), (3, 64, 64)])
def test_log_spectrum_matches_reference(shape):
  rng = np.random.default_rng(0)
  n, h, w = shape
  images = np.concatenate([
      rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8),
      _natural_images(rng, n, h, w),
  ])
  got = np.asarray(jax.jit(spectrum.log_spectrum)(images))
  want = np.stack([reference_spectrum(im) for im in images])
  assert got.shape == images.shape and got.dtype == np.float32
  # float32 FFT vs float64: values are in [-1, 1]; a few 1e-5 differences
  # appear where |FFT| is tiny.
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)
  assert np.mean(np.abs(got - want)) < 1e-5


def test_log_spectrum_float_input_equals_uint8_input():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  a = spectrum.log_spectrum(images)
  b = spectrum.log_spectrum(images.astype(np.float32) / 255.0)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_log_spectrum_is_dc_centred_and_bounded():
  rng = np.random.default_rng(2)
  images = _natural_images(rng, 2, 32, 32)
  f = np.asarray(spectrum.log_spectrum(images))
  assert f.min() >= -1.0 and f.max() <= 1.0
  # DC (largest magnitude) sits at (H/2, W/2) after fftshift -> clipped to +1.
  assert np.all(f[:, 16, 16, :] == 1.0)
  # The 5% lowest values are clipped to -1 (within interpolation slack).
  frac_low = np.mean(f == -1.0, axis=(1, 2))
  assert np.all((frac_low > 0.03) & (frac_low <= 0.06))


@pytest.mark.parametrize("value", [0, 1, 128, 255])
def test_log_spectrum_constant_image_is_finite(value):
  # numpy's formula divides 0 by 0 here; ours must stay finite and bounded.
  images = np.full((1, 16, 16, 3), value, np.uint8)
  f = np.asarray(spectrum.log_spectrum(images))
  assert np.all(np.isfinite(f))
  assert f.min() >= -1.0 and f.max() <= 1.0
  if value:
    assert np.all(f[0, 8, 8, :] == 1.0)  # DC is the only non-zero bin


def test_leading_batch_dims_are_supported():
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8)
  f = spectrum.log_spectrum(images)
  np.testing.assert_allclose(f[1, 2], spectrum.log_spectrum(images[1, 2]), atol=1e-6)


def test_normalize_rgb():
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  got = np.asarray(spectrum.normalize_rgb(images))
  mean = np.array([0.485, 0.456, 0.406])
  std = np.array([0.229, 0.224, 0.225])
  want = (images / 255.0 - mean) / std
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(spectrum.normalize_rgb(jnp.asarray(images / 255.0)), want, atol=1e-5)


def test_integer_key_sort_equals_float_sort_exactly():
  rng = np.random.default_rng(3)
  values = np.concatenate([rng.normal(size=(4, 500)) * 10.0 ** rng.integers(-8, 8, (4, 500)),
                           np.zeros((4, 3)), -np.zeros((4, 3)),
                           np.full((4, 2), np.finfo(np.float32).max),
                           np.full((4, 2), -np.finfo(np.float32).tiny)], -1).astype(np.float32)
  got = np.asarray(jax.jit(spectrum._sorted_values)(values))
  np.testing.assert_array_equal(got, np.sort(values, -1))
