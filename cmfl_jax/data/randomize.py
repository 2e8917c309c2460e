"""Processing randomised on both classes (issue #38): every training image,
bona fide or synthetic, may go through another camera's processing, a
resampling, a blur and a JPEG re-encoding, drawn at random. A detector can
then no longer tell the classes apart by the training cameras' or the
storage's traces; what is left to learn is the generator's.

What it contains (`data.randomize`, groups by name, each applied with
probability `data.randomize_prob`, in this order):

  camera    the image re-mosaicked on a Bayer pattern (RGGB, GRBG or GBRG)
            and demosaicked (bilinear, variable-number-of-gradients or
            edge-aware, OpenCV's), signal-dependent sensor noise, then
            in-camera sharpening (unsharp mask) or denoising (chroma blur or
            a bilateral filter), or neither
  resample  down then up by a factor in [0.5, 0.95], or up by [1.25, 2.5]
            then down (a crop of a larger photo brought to size), each step
            with a kernel drawn from nearest/linear/cubic/area/Lanczos
  blur      Gaussian, sigma in [0.2, 1.5]
  jpeg      quality 30-100 (libjpeg, 4:2:0)

Left out on purpose: the held-out evaluation camera's exact pipeline (BGGR
mosaic, pixel-replication demosaicing), so that `real2` stays unseen.

The draws come from the example's stateless seed, so an image's processing
depends on (seed, epoch, example) only, and a fake made from a real (an
aligned pair) gets exactly its real's processing. NumPy and OpenCV inside one
`tf.numpy_function`: one dispatch per image.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import cv2
import numpy as np
import tensorflow as tf

GROUPS = ("camera", "resample", "blur", "jpeg")
PATTERNS = ("RGGB", "GRBG", "GBRG")        # BGGR is the held-out camera's
DEMOSAIC = ("", "_VNG", "_EA")             # OpenCV's bilinear, VNG, edge-aware
_KERNELS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA,
            cv2.INTER_LANCZOS4)
JPEG_RANGE = (30, 100)
BLUR_RANGE = (0.2, 1.5)


def _bayer_codes() -> dict[str, str]:
  """Pattern (row-major 2x2 from the top left) -> OpenCV's Bayer code name,
  found by demosaicking a flat colour: OpenCV names its patterns by another
  convention than the sensor's."""
  colour = np.array([200, 120, 40], np.uint8)
  out = {}
  for pattern in PATTERNS:
    mosaic = _mosaic(np.broadcast_to(colour, (8, 8, 3)), pattern)
    for name in ("BG", "GB", "RG", "GR"):
      rgb = cv2.cvtColor(mosaic, getattr(cv2, f"COLOR_Bayer{name}2RGB"))
      if np.abs(rgb[2:6, 2:6].astype(int) - colour).max() <= 1:
        out[pattern] = name
        break
  return out


def _mosaic(img: np.ndarray, pattern: str) -> np.ndarray:
  """One colour sample per pixel, as a Bayer sensor records it."""
  channel = {"R": 0, "G": 1, "B": 2}
  out = np.empty(img.shape[:2], np.uint8)
  for k, c in enumerate(pattern):
    out[k // 2::2, k % 2::2] = img[k // 2::2, k % 2::2, channel[c]]
  return out


_CODES = _bayer_codes()


def _camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  h, w = img.shape[:2]
  if h >= 4 and w >= 4 and h % 2 == 0 and w % 2 == 0:
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    code = getattr(cv2, f"COLOR_Bayer{_CODES[pattern]}2RGB{DEMOSAIC[rng.integers(len(DEMOSAIC))]}")
    img = cv2.cvtColor(_mosaic(img, pattern), code)
  x = img.astype(np.float32) / 255.0
  shot, read = rng.uniform(0.0, 0.003), rng.uniform(0.0, 4e-5)
  x = x + rng.normal(0, 1, x.shape).astype(np.float32) * np.sqrt(shot * x + read)
  finish = rng.integers(3)
  if finish == 1:  # sharpening
    sigma = rng.uniform(0.6, 1.5)
    x = x + rng.uniform(0.2, 1.0) * (x - cv2.GaussianBlur(x, (0, 0), sigma))
  elif finish == 2:  # denoising
    x = np.clip(x, 0, 1)
    if rng.uniform() < 0.5:
      ycc = cv2.cvtColor(x, cv2.COLOR_RGB2YCrCb)
      chroma = np.ascontiguousarray(ycc[..., 1:])
      ycc[..., 1:] = cv2.GaussianBlur(chroma, (0, 0), rng.uniform(0.8, 2.0))
      x = cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)
    else:
      x = cv2.bilateralFilter(x, 5, rng.uniform(0.03, 0.1), rng.uniform(1.0, 3.0))
  return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def _resize(img: np.ndarray, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  out = cv2.resize(img, (hw[1], hw[0]), interpolation=_KERNELS[rng.integers(len(_KERNELS))])
  return out.reshape(hw + img.shape[2:])


def _resample(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  h, w = img.shape[:2]
  factor = rng.uniform(0.5, 0.95) if rng.uniform() < 0.5 else rng.uniform(1.25, 2.5)
  mid = (max(1, round(h * factor)), max(1, round(w * factor)))
  return _resize(_resize(img, mid, rng), (h, w), rng)


def _blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return cv2.GaussianBlur(img, (0, 0), rng.uniform(*BLUR_RANGE)).reshape(img.shape)


def _jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  quality = int(rng.integers(JPEG_RANGE[0], JPEG_RANGE[1] + 1))
  ok, data = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
  return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1] if ok else img


_APPLY: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "camera": _camera, "resample": _resample, "blur": _blur, "jpeg": _jpeg}


@dataclasses.dataclass(frozen=True)
class Randomization:
  """Which groups run, each with probability `prob`."""

  groups: tuple[str, ...]
  prob: float

  def __post_init__(self):
    unknown = [g for g in self.groups if g not in GROUPS]
    if unknown:
      raise ValueError(f"data.randomize: unknown groups {unknown}; choose from {GROUPS}")
    if not 0 <= self.prob <= 1:
      raise ValueError(f"data.randomize_prob must be in [0, 1], got {self.prob}")

  def numpy(self, img: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The processing of one uint8 [H, W, 3] image under a seed (int [2])."""
    rng = np.random.default_rng([int(s) & 0x7FFFFFFFFFFFFFFF for s in seed] + [38])
    out = np.ascontiguousarray(img)
    for group in GROUPS:  # a fixed order: camera, resampling, blur, storage
      if rng.uniform() < self.prob and group in self.groups:
        out = np.ascontiguousarray(_APPLY[group](out, rng))
    return out

  def __call__(self, img: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    out = tf.numpy_function(self.numpy, [img, seed], tf.uint8, stateful=False)
    return tf.ensure_shape(out, img.shape)


def from_config(data: Any) -> Randomization | None:
  """`data.randomize` ("" = off, or comma-separated groups, "all" = every
  group) and `data.randomize_prob`."""
  spec = str(data.get("randomize", "") or "").strip()
  if not spec:
    return None
  groups = GROUPS if spec == "all" else tuple(g.strip() for g in spec.split(",") if g.strip())
  return Randomization(groups, float(data.get("randomize_prob", 0.5)))
