"""The embedded benchmark, version 1: simulated bona fide and synthetic face
images, and the primitives version 2 (`v2`) builds on.

Nothing is downloaded: images are generated deterministically from a seed and
prepared once as a TFDS dataset (`cmfl_synth_faces`, in `builder.py`; this
version as `<config>:1.0.0`). The point is to model the
phenomenon the detector relies on — generators leave architecture-specific
traces in pixels and spectra; cameras leave different ones — so that training
on one family and testing on the others is a real cross-model question.

Every image starts from the same content sampler (a procedural face: face
shape, skin tone, hair, eyes, mouth, pose, lighting, a 1/f textured
background), so content alone does not separate the classes. Then:

* ``real``: a simulated camera (Gaussian optics blur, RGGB Bayer mosaic with
  bilinear demosaicing, signal-dependent shot noise + read noise).
* ``real2``: another camera (stronger blur, BGGR mosaic with pixel-replication
  demosaicing, more noise); evaluation only — false alarms on an unseen source.
* Generators first reduce the content to a latent image (area downsampling;
  the content a generator "knows"), then synthesise full resolution with a
  fixed random network per family (fixed kernels from the family's seed):
  - ``progan``: 2 x (nearest-neighbour x2, 3x3 conv) — spectral replicas.
  - ``dcgan``: 2 x 4x4 stride-2 transposed conv whose phases have unequal gain —
    checkerboard (peak at the Nyquist frequency).
  - ``stylegan2``: 2 x (FIR [1,3,3,1] x2 upsampling, modulated+demodulated
    3x3 conv with a per-image style, per-pixel noise injection).
  - ``stylegan3``: 2 x (Kaiser-windowed sinc x2 upsampling, soft nonlinearity):
    alias-free, weak traces (mostly the missing sensor noise).
  - ``swagan``: 2 x inverse Haar transforms whose detail bands are fixed linear
    maps of the approximation band's high-pass — 2x2 block structure.
  - ``diffusion``: latent at 1/8 decoded by 3 x (nearest x2, 3x3 conv), then a
    denoising low-pass that thins high frequencies.
  Each synthetic image is matched per channel to its content's mean and
  standard deviation, so brightness and colour are no shortcut.
* Storage, identical for every class: PNG (p=0.5) or JPEG with quality drawn
  from 70..95, so file format is no shortcut.

Limits: faces are cartoon-like, the "networks" are fixed linear/mildly
non-linear filters rather than trained generators, and there is no
semantics (GAN-style anatomy errors); results on it rank detectors on
low-level traces only. It is a sanity benchmark, not a substitute for FFHQ.
Version 1's synthetic images are visibly blurrier or blockier than bona fide
(one sharpness number separates them: BENCHMARKS.md), which version 2 fixes.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

# The data code's one Gaussian (also `ops.gaussian_blur`'s); every call here passes its radius.
from cmfl_jax.data.gaussian import gaussian_taps


FAMILIES = ("progan", "dcgan", "stylegan2", "stylegan3", "swagan", "diffusion")
REAL_SOURCES = ("real", "real2")
SPLITS = ("train", "dev", "eval")
SPLIT_SEED = {"train": 1, "dev": 2, "eval": 3}
SOURCE_SEED = {name: i for i, name in enumerate(REAL_SOURCES + FAMILIES)}


# ----------------------------------------------------------------------------
# Small numpy image ops on [N, H, W, C] float arrays
# ----------------------------------------------------------------------------
def conv2d(x: np.ndarray, k: np.ndarray) -> np.ndarray:
  """'same' convolution with reflect padding; k is [kh, kw, Cin, Cout]."""
  kh, kw = k.shape[:2]
  h, w = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0)),
              mode="reflect")
  out = np.zeros(x.shape[:3] + (k.shape[3],), np.float64)
  for i in range(kh):
    for j in range(kw):
      out += xp[:, i:i + h, j:j + w, :] @ k[i, j]
  return out


def separable(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
  """Same 1-D filter along both axes, per channel."""
  c = x.shape[-1]
  eye = np.eye(c)
  kv = taps[:, None, None, None] * eye[None, None]
  kh = taps[None, :, None, None] * eye[None, None]
  return conv2d(conv2d(x, kv), kh)


def zero_insert(x: np.ndarray) -> np.ndarray:
  n, h, w, c = x.shape
  out = np.zeros((n, 2 * h, 2 * w, c))
  out[:, ::2, ::2] = x
  return out


def area_downsample(x: np.ndarray, f: int) -> np.ndarray:
  n, h, w, c = x.shape
  return x.reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4))


def mixing_kernel(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
  """A fixed random kxk conv: per-channel smoothing plus a zero-mean random
  spatial pattern (the family's fingerprint) and weak cross-channel mixing.
  Every output channel has DC gain exactly 1, so colours stay sane."""
  base = np.outer(gaussian_taps(0.6, size // 2), gaussian_taps(0.6, size // 2))
  k = np.zeros((size, size, 3, 3))
  for c in range(3):
    pattern = rng.normal(0, 1, (size, size))
    k[:, :, c, c] = base + strength * (pattern - pattern.mean()) / size
  mix = rng.normal(0, 0.03, (3, 3))
  np.fill_diagonal(mix, 0)
  k[size // 2, size // 2] += mix - np.diag(mix.sum(axis=0))
  return k


# ----------------------------------------------------------------------------
# Content: procedural faces
# ----------------------------------------------------------------------------
SKIN_TONES = np.array([[0.95, 0.80, 0.70], [0.87, 0.68, 0.55], [0.70, 0.50, 0.38],
                       [0.50, 0.35, 0.25], [0.33, 0.23, 0.17]])
HAIR_COLORS = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.10], [0.75, 0.60, 0.35],
                        [0.55, 0.25, 0.12], [0.60, 0.60, 0.60]])


def _pink_noise(rng: np.random.Generator, size: int, channels: int, slope: float) -> np.ndarray:
  f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
  amp = 1.0 / np.maximum(f, 1.0 / size) ** slope
  x = np.real(np.fft.ifft2(amp * np.exp(2j * np.pi * rng.uniform(size=(channels, size, size)))))
  x = (x - x.mean(axis=(1, 2), keepdims=True)) / (x.std(axis=(1, 2), keepdims=True) + 1e-9)
  return np.moveaxis(x, 0, -1)


def render_face(rng: np.random.Generator, size: int, with_masks: bool = False):
  """One face-like image in [0, 1], HxWx3 float64 (and, `with_masks`, its
  boolean "face" and "hair" regions, for version 2's detail)."""
  yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
  tint = rng.uniform(0.25, 0.8, 3)
  img = np.clip(tint + 0.12 * _pink_noise(rng, size, 3, rng.uniform(0.9, 1.4)), 0, 1)
  cx, cy = rng.normal(0, 0.06, 2)
  rx, ry = rng.uniform(0.42, 0.56), rng.uniform(0.58, 0.72)
  roll, yaw = rng.normal(0, 0.12), rng.normal(0, 0.12)
  cr, sr = np.cos(roll), np.sin(roll)
  u = ((xx - cx) * cr + (yy - cy) * sr) / rx
  v = (-(xx - cx) * sr + (yy - cy) * cr) / ry
  r2 = u ** 2 + v ** 2
  # Hair: a larger ellipse behind the face, textured.
  hair = HAIR_COLORS[rng.integers(len(HAIR_COLORS))] * rng.uniform(0.8, 1.2)
  hair_mask = (u ** 2 / 1.25 + (v + 0.15) ** 2 / 1.2 < 1) & (v < rng.uniform(-0.1, 0.5))
  hair_tex = hair * (1 + 0.25 * _pink_noise(rng, size, 1, 0.6))
  img = np.where(hair_mask[..., None], np.clip(hair_tex, 0, 1), img)
  # Face with Lambertian shading of an ellipsoid under a random light.
  skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 0.04, 3)
  light = rng.normal(0, 1, 3) * [1, 1, 0.3] + [0, 0, 1.5]
  light /= np.linalg.norm(light)
  nz = np.sqrt(np.clip(1 - r2, 0, 1))
  shade = 0.55 + 0.45 * np.clip(u * light[0] + v * light[1] + nz * light[2], 0, 1)
  face = np.clip(skin * shade[..., None] * (1 + 0.03 * _pink_noise(rng, size, 1, 1.0)), 0, 1)
  face_mask = (r2 < 1) & ~(hair_mask & (v < -0.55))
  img = np.where(face_mask[..., None], face, img)
  # Eyes (sclera + iris), brows, nose shadow, mouth.
  for side in (-1, 1):
    ex, ey = side * 0.38 + yaw, -0.12
    eye = ((u - ex) / 0.2) ** 2 + ((v - ey) / 0.09) ** 2 < 1
    iris = ((u - ex - yaw * 0.3) / 0.09) ** 2 + ((v - ey) / 0.085) ** 2 < 1
    img = np.where(eye[..., None], [0.92, 0.92, 0.9], img)
    img = np.where((eye & iris)[..., None], rng.uniform(0.05, 0.45, 3), img)
    brow = (np.abs(v - ey + 0.2) < 0.035) & (np.abs(u - ex) < 0.22)
    img = np.where(brow[..., None], hair * 0.8, img)
  nose = (np.abs(u - yaw * 0.5 - 0.04) < 0.05) & (v > -0.05) & (v < 0.28)
  img = np.where(nose[..., None], img * 0.85, img)
  mouth_w = rng.uniform(0.22, 0.36)
  mouth = ((u - yaw * 0.4) / mouth_w) ** 2 + ((v - 0.5) / rng.uniform(0.04, 0.09)) ** 2 < 1
  img = np.where(mouth[..., None], np.array([0.65, 0.2, 0.22]) * rng.uniform(0.7, 1.1), img)
  img = np.clip(img, 0, 1)
  return (img, {"face": face_mask, "hair": hair_mask}) if with_masks else img


# ----------------------------------------------------------------------------
# Cameras (bona fide)
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Camera:
  blur_sigma: tuple[float, float]
  cfa: str                 # Bayer pattern, e.g. "RGGB"
  demosaic: str            # "bilinear" | "replicate"
  shot: float              # variance per unit signal
  read: float              # read-noise variance


CAMERAS = {
    "real": Camera((0.4, 0.8), "RGGB", "bilinear", 0.0015, 2e-5),
    "real2": Camera((0.7, 1.1), "BGGR", "replicate", 0.003, 6e-5),
}


def _cfa_masks(pattern: str, size: int) -> np.ndarray:
  idx = {"R": 0, "G": 1, "B": 2}
  masks = np.zeros((size, size, 3))
  for k, ch in enumerate(pattern):
    masks[k // 2::2, k % 2::2, idx[ch]] = 1
  return masks


def camera_capture(x: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
  n, size = x.shape[0], x.shape[1]
  out = np.empty_like(x)
  for i in range(n):
    out[i] = separable(x[i:i + 1], gaussian_taps(rng.uniform(*cam.blur_sigma), 3))[0]
  masks = _cfa_masks(cam.cfa, size)
  raw = (out * masks).sum(-1, keepdims=True)
  raw = raw + rng.normal(0, 1, raw.shape) * np.sqrt(cam.shot * np.clip(raw, 0, 1) + cam.read)
  mosaic = raw * masks
  if cam.demosaic == "bilinear":
    k = np.array([0.5, 1.0, 0.5])
    num = separable(mosaic, k)
    den = separable(np.broadcast_to(masks, mosaic.shape).copy(), k)
    return np.clip(num / np.maximum(den, 1e-9), 0, 1)
  # Pixel replication: each 2x2 cell takes its own R, B and the mean of its two Gs.
  cells = mosaic.reshape(n, size // 2, 2, size // 2, 2, 3).sum(axis=(2, 4))
  counts = masks.reshape(size // 2, 2, size // 2, 2, 3).sum(axis=(1, 3))
  cells = cells / counts
  return np.clip(cells.repeat(2, axis=1).repeat(2, axis=2), 0, 1)


# ----------------------------------------------------------------------------
# Generator families
# ----------------------------------------------------------------------------
def match_stats(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
  mx, sx = x.mean(axis=(1, 2), keepdims=True), x.std(axis=(1, 2), keepdims=True) + 1e-6
  mr, sr = ref.mean(axis=(1, 2), keepdims=True), ref.std(axis=(1, 2), keepdims=True)
  return np.clip((x - mx) / sx * sr + mr, 0, 1)


def sinc_taps(half: int = 6, beta: float = 6.0) -> np.ndarray:
  """Kaiser-windowed sinc for x2 upsampling (cut-off at the old Nyquist)."""
  t = np.arange(-2 * half + 1, 2 * half) / 2.0
  taps = np.sinc(t) * np.kaiser(len(t), beta)
  return taps / taps.sum() * 2


def generate(family: str, content: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Synthesises `content` ([N, S, S, 3] in [0, 1]) with a family's fixed network."""
  net = np.random.default_rng(1000 + SOURCE_SEED[family])  # fixed per family
  n = content.shape[0]
  if family == "progan":
    kernels = [mixing_kernel(net, 3, 0.6) for _ in range(2)]
    x = area_downsample(content, 4)
    for k in kernels:
      x = conv2d(x.repeat(2, axis=1).repeat(2, axis=2), k)
  elif family == "dcgan":
    base = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 16.0
    kernels = []
    for _ in range(2):
      k = base[:, :, None, None] * np.eye(3)[None, None] * 4
      phase_gain = 1 + net.uniform(-0.12, 0.12, (2, 2))  # unequal phases: checkerboard
      k = k * np.tile(phase_gain, (2, 2))[:, :, None, None]
      kernels.append(k)
    x = area_downsample(content, 4)
    for k in kernels:
      x = conv2d(zero_insert(x), k)
  elif family == "stylegan2":
    fir = np.array([1, 3, 3, 1]) / 4.0
    kernels = [mixing_kernel(net, 3, 0.3) for _ in range(2)]
    noise_gain = net.uniform(0.015, 0.03, (2, 3))
    x = area_downsample(content, 4)
    for s, k in enumerate(kernels):
      x = separable(zero_insert(x), fir)
      style = 1 + 0.15 * rng.normal(0, 1, (n, 1, 1, 3))  # per-image modulation
      x = conv2d(x * style, k) / style.mean(axis=-1, keepdims=True)  # demodulated gain
      x = x + noise_gain[s] * rng.normal(0, 1, x.shape[:3] + (1,))
  elif family == "stylegan3":
    taps = sinc_taps()
    x = area_downsample(content, 4)
    for _ in range(2):
      x = separable(zero_insert(x), taps)
      x = 0.5 + 0.48 * np.tanh((x - 0.5) / 0.48)
  elif family == "swagan":
    maps = [net.normal(0, 0.12, (3, 3, 3, 3 * 3)) / 3 for _ in range(2)]
    x = area_downsample(content, 4)
    for m in maps:
      details = conv2d(x - separable(x, gaussian_taps(1.0, 2)), m)  # from the high-pass of LL
      lh, hl, hh = details[..., 0:3], details[..., 3:6], details[..., 6:9]
      up = np.zeros((n, 2 * x.shape[1], 2 * x.shape[2], 3))
      up[:, 0::2, 0::2] = x + lh + hl + hh
      up[:, 0::2, 1::2] = x - lh + hl - hh
      up[:, 1::2, 0::2] = x + lh - hl - hh
      up[:, 1::2, 1::2] = x - lh - hl + hh
      x = up
  elif family == "diffusion":
    kernels = [mixing_kernel(net, 3, 0.4) for _ in range(3)]
    x = area_downsample(content, 8)
    for k in kernels:
      x = conv2d(x.repeat(2, axis=1).repeat(2, axis=2), k)
    x = separable(x, gaussian_taps(0.9, 3)) + 0.004 * rng.normal(0, 1, x.shape)
  else:
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
  return match_stats(x, content)


# ----------------------------------------------------------------------------
# Storage and one image
# ----------------------------------------------------------------------------
def storage_choice(rng: np.random.Generator) -> int | None:
  """PNG (None, p=0.5) or a JPEG quality from 70..95, drawn alike for every class."""
  if rng.uniform() < 0.5:
    return None
  return int(rng.integers(70, 96))


def jpeg_round_trip(img_u8: np.ndarray, quality: int) -> np.ndarray:
  """The uint8 image as a JPEG of `quality` decodes (PIL/libjpeg)."""
  buf = io.BytesIO()
  Image.fromarray(img_u8).save(buf, format="JPEG", quality=quality)
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def store(img_u8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Same storage distribution for every class: PNG (lossless) or JPEG q 70..95."""
  quality = storage_choice(rng)
  return img_u8 if quality is None else jpeg_round_trip(img_u8, quality)


def render(source: str, rng: np.random.Generator, size: int) -> np.ndarray:
  """One version-1 image of `source` in [0, 1] before storage."""
  content = render_face(rng, size)[None]
  if source in CAMERAS:
    return camera_capture(content, CAMERAS[source], rng)[0]
  return generate(source, content, rng)[0]
