"""Version 2 of the embedded benchmark (issue #20): synthetic faces as sharp
as the bona fide ones, told apart only by small, family-specific traces.

Version 1's generators reduced the content to a 1/4 or 1/8 latent and
synthesised from it, so every family was visibly blurred or blocky and one
sharpness number separated it from bona fide. Here every class keeps the
full detail of the same content, and each generator family only *re-renders*
it with its own operators:

* Content: version 1's procedural face plus fine detail at pixel scale
  (skin pores and grain, oriented hair strands, background grain), the same
  sampler for every class.
* Bona fide ``real`` (training): three simulated cameras, one drawn per
  image — different Bayer layouts, demosaicing, noise levels, in-camera
  sharpening or chroma noise reduction, in-camera JPEG. ``real2`` (held out)
  is version 1's second camera (BGGR, pixel-replication demosaicing).
* Each generator imitates the cameras' optics (a blur drawn from the same
  range) and then re-synthesises the image from a 1/2-resolution latent
  ``d`` plus the detail band ``H = base - U(d)`` (``U``: ideal band-limited
  x2 upsampling), each family with its own operators:
  - ``progan``: nearest-neighbour x2 + 3x3 conv on the latent; its
    noise-like texture is half-resolution noise through the same layer.
  - ``dcgan``: 4x4 stride-2 transposed conv with unequal phase gains on the
    latent, on the texture and on the detail band: a small checkerboard.
  - ``stylegan2``: FIR [1,3,3,1] upsampling + modulated 3x3 conv; per-pixel
    noise injection shared by the colour channels (luminance-only noise).
  - ``stylegan3``: alias-free: sinc upsampling, the detail band and noise
    band-limited below Nyquist, a soft nonlinearity.
  - ``swagan``: inverse Haar synthesis whose detail bands get a fixed linear
    map of the latent's high-pass and noise: 2x2 block structure.
  - ``diffusion``: a 1/8 latent decoder at small weight, the detail band
    soft-thresholded (denoised) and residual correlated noise.
  The upsampler's deviation from ideal (its trace) is added at a small
  weight, and the texture imitates sensor noise in strength but not in
  structure: it is signal-independent and shaped by the family's operator.
* Storage is version 1's, identical for every class.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cmfl_jax.data.synthetic import simulate as v1
from cmfl_jax.data.synthetic.simulate import (area_downsample, conv2d, gaussian_taps, separable,
                                              zero_insert)


# ----------------------------------------------------------------------------
# Content with fine detail
# ----------------------------------------------------------------------------
def _line_kernel(angle: float, length: int = 7) -> np.ndarray:
  """A normalised 1-pixel-wide line of `length` at `angle` (hair strands)."""
  k = np.zeros((length, length))
  c = length // 2
  for t in np.linspace(-c, c, 4 * length):
    k[int(round(c + t * np.sin(angle))), int(round(c + t * np.cos(angle)))] = 1.0
  return k / k.sum()


def _unit(x: np.ndarray) -> np.ndarray:
  return (x - x.mean()) / (x.std() + 1e-9)


def render_face(rng: np.random.Generator, size: int, with_masks: bool = False):
  """Version 1's face with pixel-scale detail: pores, hair strands, grain
  (and, `with_masks`, version 1's boolean "face" and "hair" regions)."""
  img, masks = v1.render_face(rng, size, with_masks=True)
  white = rng.normal(0, 1, (3, size, size))
  grain = _unit(white[0])
  pores = (rng.uniform(size=(size, size)) < 0.04) * rng.uniform(0.08, 0.2)
  skin = 1 + rng.uniform(0.04, 0.08) * grain - pores
  k = _line_kernel(rng.uniform(0, np.pi))
  strands = _unit(conv2d(white[1][None, :, :, None], k[:, :, None, None])[0, :, :, 0])
  hair = 1 + rng.uniform(0.25, 0.4) * strands
  background = 1 + rng.uniform(0.03, 0.06) * _unit(white[2])
  gain = np.where(masks["face"], skin, np.where(masks["hair"], hair, background))
  img = np.clip(img * gain[..., None], 0, 1)
  return (img, masks) if with_masks else img


# ----------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CameraV2:
  """A version-1 sensor (optics, mosaic, noise, demosaicing) plus in-camera processing."""
  sensor: v1.Camera
  sharpen: float = 0.0               # in-camera unsharp-mask amount
  chroma_nr: float = 0.0             # chroma noise reduction (blur sigma of chroma)
  jpeg: tuple[int, int] | None = None  # in-camera JPEG quality range


TRAIN_CAMERAS = (
    CameraV2(v1.Camera((0.4, 0.7), "RGGB", "bilinear", 0.0015, 2e-5)),
    CameraV2(v1.Camera((0.5, 0.8), "GRBG", "bilinear", 0.0010, 1e-5), sharpen=0.6,
             jpeg=(90, 97)),
    CameraV2(v1.Camera((0.4, 0.6), "GBRG", "bilinear", 0.0025, 4e-5), chroma_nr=1.2,
             jpeg=(85, 95)),
)
HELD_OUT_CAMERA = CameraV2(v1.CAMERAS["real2"])


_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.169, -0.331, 0.5], [0.5, -0.419, -0.081]])
_FROM_YCC = np.linalg.inv(_TO_YCC)


def capture(content: np.ndarray, cam: CameraV2, rng: np.random.Generator) -> np.ndarray:
  """One [S, S, 3] image through a camera, with its in-camera processing."""
  x = v1.camera_capture(content[None], cam.sensor, rng)
  if cam.sharpen:
    x = x + cam.sharpen * (x - separable(x, gaussian_taps(1.0, 2)))
  if cam.chroma_nr:
    ycc = x @ _TO_YCC.T
    ycc[..., 1:] = separable(ycc[..., 1:], gaussian_taps(cam.chroma_nr, 3))
    x = ycc @ _FROM_YCC.T
  x = np.clip(x[0], 0, 1)
  if cam.jpeg:
    quality = int(rng.integers(cam.jpeg[0], cam.jpeg[1] + 1))
    x = v1.jpeg_round_trip(np.round(x * 255).astype(np.uint8), quality) / 255.0
  return x


# ----------------------------------------------------------------------------
# Generator families
# ----------------------------------------------------------------------------
_SINC = v1.sinc_taps()


def ideal_up(x: np.ndarray) -> np.ndarray:
  """Band-limited x2 upsampling (Kaiser-windowed sinc)."""
  return separable(zero_insert(x), _SINC)


def _detail_kernel(net: np.random.Generator, strength: float) -> np.ndarray:
  """Identity plus a small zero-mean 3x3 pattern per channel: the family's
  fingerprint on the detail band (DC gain exactly 1)."""
  k = np.zeros((3, 3, 3, 3))
  for c in range(3):
    p = net.normal(0, 1, (3, 3))
    k[:, :, c, c] = strength * (p - p.mean()) / 3
    k[1, 1, c, c] += 1
  return k


def _nn_up(x: np.ndarray) -> np.ndarray:
  return x.repeat(2, axis=1).repeat(2, axis=2)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
  """White noise at a strength drawn per image (like the cameras' ISO range)."""
  return rng.normal(0, 1, shape) * rng.uniform(lo, hi)


def _progan(base, d, up_ideal, rng, net, w):
  k = v1.mixing_kernel(net, 3, 0.6)
  trace = conv2d(_nn_up(d), k) - up_ideal
  tex = conv2d(_nn_up(_noise(rng, d.shape, 0.007, 0.014)), k)
  return base + w * trace + tex


def _transposed(x, k):
  return conv2d(zero_insert(x), k)


def _dcgan(base, d, up_ideal, rng, net, w):
  b = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 16.0
  gain = 1 + net.uniform(-0.1, 0.1, (2, 2))
  gain /= gain.mean()
  k = (b[:, :, None, None] * np.eye(3)[None, None]) * np.tile(gain, (2, 2))[:, :, None, None]
  trace = _transposed(d, k) - up_ideal
  phases = np.tile(gain, (base.shape[1] // 2, base.shape[2] // 2))[None, :, :, None]
  detail = (base - up_ideal) * phases  # the transposed conv's phases act on the detail too
  tex = _transposed(_noise(rng, d.shape, 0.007, 0.014), k)
  return up_ideal + w * trace + detail + tex


def _stylegan2(base, d, up_ideal, rng, net, w):
  n = base.shape[0]
  k = v1.mixing_kernel(net, 3, 0.3)
  style = 1 + 0.05 * rng.normal(0, 1, (n, 1, 1, 3))
  up = separable(zero_insert(d), np.array([1, 3, 3, 1]) / 4.0)
  up = conv2d(up * style, k) / style  # demodulated: the style only changes the mixing
  detail = conv2d(base - up_ideal, _detail_kernel(net, 0.3))
  gain = net.uniform(0.8, 1.2, 3)
  injected = _noise(rng, base.shape[:3] + (1,), 0.016, 0.032) * gain
  return up_ideal + w * (up - up_ideal) + detail + conv2d(injected, k)


def _band_limit(x: np.ndarray, cutoff: float = 0.42) -> np.ndarray:
  """Ideal low-pass at `cutoff` cycles/pixel (separable, via the FFT)."""
  f = np.abs(np.fft.fftfreq(x.shape[1]))
  mask = ((f[:, None] <= cutoff) & (f[None, :] <= cutoff))[None, :, :, None]
  return np.real(np.fft.ifft2(np.fft.fft2(x, axes=(1, 2)) * mask, axes=(1, 2)))


def _stylegan3(base, d, up_ideal, rng, net, w):
  del net, w  # alias-free: no upsampling trace
  detail = _band_limit(base - up_ideal)
  tex = _band_limit(_noise(rng, base.shape, 0.01, 0.0175))
  x = up_ideal + 1.15 * detail + tex
  return v1.match_stats(0.5 + 0.6 * np.tanh((x - 0.5) / 0.6), base)


def _swagan(base, d, up_ideal, rng, net, w):
  m = net.normal(0, 0.12, (3, 3, 3, 9)) / 3
  n, s = base.shape[0], base.shape[1]
  # Haar analysis of the base (LL = d), small learned detail + noise, synthesis.
  a, b = base[:, 0::2, 0::2], base[:, 0::2, 1::2]
  c, e = base[:, 1::2, 0::2], base[:, 1::2, 1::2]
  lh, hl, hh = (a - b + c - e) / 4, (a + b - c - e) / 4, (a - b - c + e) / 4
  learned = conv2d(d - separable(d, gaussian_taps(1.0, 2)), m) * w
  noise = _noise(rng, (n, s // 2, s // 2, 9), 0.003, 0.006)
  lh, hl, hh = (band + learned[..., i:i + 3] + noise[..., i:i + 3]
                for i, band in zip((0, 3, 6), (lh, hl, hh)))
  out = np.empty_like(base)
  out[:, 0::2, 0::2] = d + lh + hl + hh
  out[:, 0::2, 1::2] = d - lh + hl - hh
  out[:, 1::2, 0::2] = d + lh - hl - hh
  out[:, 1::2, 1::2] = d - lh - hl + hh
  return out


def _diffusion(base, d, up_ideal, rng, net, w):
  kernels = [v1.mixing_kernel(net, 3, 0.4) for _ in range(3)]
  z = area_downsample(base, 8)
  smooth = ideal_up(ideal_up(ideal_up(z)))
  for k in kernels:
    z = conv2d(_nn_up(z), k)
  detail = base - up_ideal
  t = rng.uniform(0.005, 0.012)
  denoised = np.sign(detail) * np.maximum(np.abs(detail) - t, 0) * 1.25
  tex = separable(_noise(rng, base.shape, 0.0125, 0.0225), gaussian_taps(0.6, 2))
  return up_ideal + w * (z - smooth) + denoised + tex


_FAMILIES = {"progan": _progan, "dcgan": _dcgan, "stylegan2": _stylegan2,
             "stylegan3": _stylegan3, "swagan": _swagan, "diffusion": _diffusion}
# Weight of each family's upsampling trace (its deviation from ideal
# upsampling), tuned so that the sharpness and spectrum statistics stay bona
# fide's (tools/difficulty.py) while the trace stays learnable.
TRACE_WEIGHT = {"progan": 0.6, "dcgan": 0.2, "stylegan2": 0.6, "stylegan3": 0.0,
                "swagan": 0.4, "diffusion": 0.25}
OPTICS_SIGMA = (0.7, 1.0)  # the generators imitate the cameras' sharpness


def generate(family: str, content: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Re-renders one [S, S, 3] content image with a family's operators."""
  base = separable(content[None], gaussian_taps(rng.uniform(*OPTICS_SIGMA), 3))
  return np.clip(rerender(family, base, rng)[0], 0, 1)


def rerender(family: str, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A family's re-rendering of `base` ([N, S, S, 3], already at the cameras'
  sharpness), unclipped: `rerender(...) - base` is the family's trace."""
  if family not in _FAMILIES:
    raise ValueError(f"unknown family {family!r}; choose from {tuple(_FAMILIES)}")
  net = np.random.default_rng(2000 + v1.SOURCE_SEED[family])  # fixed per family
  d = area_downsample(base, 2)
  return _FAMILIES[family](base, d, ideal_up(d), rng, net, TRACE_WEIGHT[family])


def render(source: str, rng: np.random.Generator, size: int) -> np.ndarray:
  """One image of `source` in [0, 1] before storage."""
  if source == "real":
    return render_real(rng, size)[0]
  content = render_face(rng, size)
  if source == "real2":
    return capture(content, HELD_OUT_CAMERA, rng)
  return generate(source, content, rng)


def render_real(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int, np.ndarray]:
  """A training-camera image in [0, 1] before storage, the index of the camera
  that took it (in `TRAIN_CAMERAS`) and its face region (bool [S, S]): the
  same random draws, so the same pixels, as `render("real", ...)`."""
  content, face, camera = real_scene(rng, size)
  return capture(content, TRAIN_CAMERAS[camera], rng), camera, face


def real_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, int]:
  """A training real before its camera: content, face region and the index of
  the camera that will take it (the draws `render_real` starts with)."""
  content, masks = render_face(rng, size, with_masks=True)
  return content, masks["face"], int(rng.integers(len(TRAIN_CAMERAS)))


# ----------------------------------------------------------------------------
# Aligned fakes (issue #38): a family's operators applied to a stored real
# ----------------------------------------------------------------------------
#: How an aligned fake is made from its real: the whole image re-rendered (an
#: autoencoder's reconstruction, AlignedForensics) or the face region only,
#: blended back into the untouched original (an inpainting with its
#: background restored, B-Free).
ALIGNED_MODES = ("recon", "inpaint")


def face_blend_mask(face: np.ndarray, feather: float = 1.5) -> np.ndarray:
  """The inpainting's soft mask [S, S, 1]: 1 on the face region, feathered
  over ~2 px beyond it, as inpainting pipelines blend the edited region back."""
  grown = separable(face[None, :, :, None].astype(np.float64), gaussian_taps(1.0, 2))[0] > 0.05
  soft = separable(grown[None].astype(np.float64), gaussian_taps(feather, 3))[0]
  return np.where(face[..., None], 1.0, np.clip(soft, 0, 1))  # the face itself wholly new


def aligned_fake(family: str, mode: str, real_u8: np.ndarray, face: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
  """The fake made from one stored real image (uint8 [S, S, 3]): `mode`
  "recon" re-renders all of it with `family`'s operators, "inpaint" only its
  face region (`face`, bool [S, S]), the rest kept pixel for pixel. Returns
  [0, 1] floats before storage."""
  if mode not in ALIGNED_MODES:
    raise ValueError(f"unknown aligned mode {mode!r}; choose from {ALIGNED_MODES}")
  real = real_u8.astype(np.float64)[None] / 255.0
  fake = np.clip(rerender(family, real, rng)[0], 0, 1)
  if mode == "recon":
    return fake
  alpha = face_blend_mask(face)
  return alpha * fake + (1 - alpha) * real[0]
