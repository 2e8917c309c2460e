"""Faces from raw photographs: MTCNN detection (five landmarks), then a
similarity alignment (FFHQ's framing by default) or a square box crop, at
224x224 by default.

The paper's images were MTCNN-detected, aligned and cropped to 224x224; this
module reproduces that step for new photographs so that they look like the
training crops.

Detector: the P-, R- and O-Nets of the `mtcnn` package (MIT, 1.0.x; TensorFlow,
no PyTorch), an optional extra: `pip install -e ".[align]"`. Only its network
definitions and box utilities are used. Its weight files are joblib pickles;
they are read here with an unpickler that accepts nothing but numeric arrays
(`_load_mtcnn_weights`), so no code from a file is executed. The image pyramid
and the PNet pass are this module's own (facenet-pytorch's pyramid: mtcnn
1.0's crashes for min_face_size >~ 30 and re-converts the float64 image at
every scale); RNet and ONet are the package's stages. Defaults follow
facenet-pytorch: thresholds (0.6, 0.7, 0.7), scale factor 0.709, faces >= 20 px.

Landmarks are (5, 2) pixel coordinates; the crop geometry (templates,
alignment, box and tight crops, warp) is `face_geometry`.

Nothing here raises for a bad image: `load_rgb` and `detect_and_align` return
`NoFace(reason)` instead.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import pickle
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from cmfl_jax.data import readers
from cmfl_jax.data.face_geometry import (alignment_matrix, box_matrix, face_template,
                                         outside_fraction, tight_matrix, warp)

_ALIGN_EXTRA = 'pip install -e ".[align]"'

Mode = Literal["align", "box"]
Policy = Literal["largest", "most_confident", "all", "skip_multiple"]


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
  """MTCNN settings; the defaults are facenet-pytorch's.

  thresholds: P-, R-, O-Net face probabilities a candidate must exceed.
  scale_factor: pyramid step; min_face_size: smallest face searched for (px).
  nms: IoU thresholds for PNet per scale, PNet across scales, RNet, ONet
    (ONet's is intersection over the smaller box, as in the original).
  detect_max_side: if set, detection runs on a copy whose longer side is at
    most this (faster on large photos; min_face_size then refers to that
    copy); crops are always taken from the full-resolution image.
  """
  thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
  scale_factor: float = 0.709
  min_face_size: float = 20.0
  nms: tuple[float, float, float, float] = (0.5, 0.7, 0.7, 0.7)
  detect_max_side: int | None = None

  def __post_init__(self):
    if len(self.thresholds) != 3 or not all(0.0 <= t < 1.0 for t in self.thresholds):
      raise ValueError(f"thresholds must be three values in [0, 1), got {self.thresholds}")
    if not 0.0 < self.scale_factor < 1.0:
      raise ValueError(f"scale_factor must be in (0, 1), got {self.scale_factor}")
    if not self.min_face_size > 0:
      raise ValueError(f"min_face_size must be > 0, got {self.min_face_size}")
    if len(self.nms) != 4 or not all(0.0 < t <= 1.0 for t in self.nms):
      raise ValueError(f"nms must be four values in (0, 1], got {self.nms}")
    if self.detect_max_side is not None and self.detect_max_side < 12:
      raise ValueError(f"detect_max_side must be >= 12, got {self.detect_max_side}")


@dataclasses.dataclass(frozen=True, eq=False)
class Detection:
  """One MTCNN face: box (x1, y1, x2, y2) as edges (pixel i spans [i, i+1)),
  landmarks (5, 2) x/y as pixel indices, ONet score."""
  box: np.ndarray
  landmarks: np.ndarray
  score: float

  @property
  def size(self) -> float:
    """Longer side of the box in pixels."""
    return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


@dataclasses.dataclass(frozen=True, eq=False)
class Face:
  """A cropped face. `transform` (2, 3) maps source pixel (x, y, 1) to crop
  pixel; `outside` is the fraction of the crop's pixels whose source lies
  outside the photograph (filled with `fill`)."""
  crop: np.ndarray
  box: np.ndarray
  landmarks: np.ndarray
  score: float
  transform: np.ndarray
  outside: float
  faces_found: int = 1      # faces MTCNN found (above thresholds and size) in the photograph
  framing: str = "aligned"  # "aligned" (the mode's crop) or "tight" (the face fills the frame)

  @property
  def source_side(self) -> float:
    """The crop's side in source pixels: output side / this = the upscale."""
    return float(self.crop.shape[0] / np.sqrt(abs(np.linalg.det(self.transform[:, :2]))))


@dataclasses.dataclass(frozen=True)
class NoFace:
  """Why an image gave no crop (unreadable file, no face, policy...)."""
  reason: str

  def __bool__(self) -> bool:  # `if result:` reads as "got faces"
    return False


# ----------------------------------------------------------------------------
# Loading.

def load_rgb(path: str | os.PathLike, max_pixels: int = 64_000_000,
             max_bytes: int = 200_000_000) -> np.ndarray | NoFace:
  """(H, W, 3) uint8 RGB of a file (`decode_rgb`), or NoFace(reason) for
  files that are missing, empty, too large, not images, corrupt or truncated."""
  try:
    size = os.path.getsize(path)
  except OSError as e:
    return NoFace(f"unreadable file: {e.strerror or e}")
  if size == 0:
    return NoFace("empty file")
  if size > max_bytes:
    return NoFace(f"file too large: {size} bytes > {max_bytes}")
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    return NoFace(f"unreadable file: {e.strerror or e}")
  return decode_rgb(data, max_pixels)


def decode_rgb(data: bytes, max_pixels: int = 64_000_000) -> np.ndarray | NoFace:
  """(H, W, 3) uint8 RGB, EXIF orientation applied (first frame of animations,
  alpha dropped), or NoFace(reason) for bytes that are not an image, corrupt,
  truncated or too large."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        too_large = readers.pixel_reason(im, max_pixels)
        if too_large:
          return NoFace(f"image {too_large}")
        if w == 0 or h == 0:
          return NoFace("empty image (0 pixels)")
        im.load()
        im = ImageOps.exif_transpose(im)
        rgb = np.asarray(im.convert("RGB"), np.uint8)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    return NoFace(f"image too large: {e}")
  except Image.UnidentifiedImageError:
    return NoFace("not an image (unknown or corrupt format)")
  except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
    return NoFace(f"corrupt or truncated image: {e}")
  return rgb


# ----------------------------------------------------------------------------
# MTCNN (optional extra).

class _ArrayHeader:
  """Stands in for joblib's NumpyArrayWrapper: only holds shape/dtype/order."""


_ALLOWED_GLOBALS = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): _ArrayHeader,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _WeightsUnpickler(pickle._Unpickler):  # pure-Python one: BUILD can be hooked
  """joblib's numpy pickle format, restricted to plain numeric arrays: any
  other global (a function, a class, `os.system`...) is refused."""
  dispatch = pickle._Unpickler.dispatch.copy()

  def __init__(self, file: io.BytesIO):
    super().__init__(file)
    self._raw = file

  def find_class(self, module, name):
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(f"weights file refers to {module}.{name}; refused") from None

  def load_build(self):
    pickle._Unpickler.load_build(self)
    header = self.stack[-1]
    if not isinstance(header, _ArrayHeader):
      return
    dtype = np.dtype(header.dtype)
    if dtype.hasobject or header.subclass is not np.ndarray or dtype.kind not in "fiub":
      raise pickle.UnpicklingError(f"weights file holds a non-numeric array ({dtype})")
    if getattr(header, "numpy_array_alignment_bytes", None) is not None:
      self._raw.read(self._raw.read(1)[0])  # alignment padding
    shape = tuple(int(s) for s in header.shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = self._raw.read(nbytes)
    if len(buf) != nbytes:
      raise pickle.UnpicklingError("weights file is truncated")
    arr = np.frombuffer(buf, dtype).copy()
    arr = arr.reshape(shape[::-1]).T if header.order == "F" else arr.reshape(shape)
    self.stack[-1] = arr

  dispatch[pickle.BUILD[0]] = load_build


def _load_mtcnn_weights(name: str) -> list[np.ndarray]:
  """The mtcnn package's bundled weights (lz4 + joblib pickle), without
  executing anything from the file."""
  import importlib.resources
  import lz4.frame
  raw = (importlib.resources.files("mtcnn.assets.weights") / name).read_bytes()
  weights = _WeightsUnpickler(io.BytesIO(lz4.frame.decompress(raw))).load()
  if not isinstance(weights, list) or not all(isinstance(w, np.ndarray) for w in weights):
    raise ValueError(f"{name}: expected a list of arrays")
  return weights


class _Mtcnn:
  """The three networks, built once per process (see `_mtcnn`)."""

  def __init__(self):
    import tensorflow as tf
    from mtcnn.network.onet import ONet
    from mtcnn.network.pnet import PNet
    from mtcnn.network.rnet import RNet
    from mtcnn.stages import StageONet, StageRNet
    from mtcnn.stages.base import StageBase
    from mtcnn.utils import bboxes

    self.tf, self.bb = tf, bboxes
    nets = {}
    for key, cls in (("p", PNet), ("r", RNet), ("o", ONet)):
      net = cls()
      net.build()
      net.set_weights(_load_mtcnn_weights(f"{key}net.lz4"))
      nets[key] = net
    self.rnet = StageRNet.__new__(StageRNet)  # the stages' own __init__ would joblib.load
    StageBase.__init__(self.rnet, stage_name="Stage RNET", stage_id=2, model=nets["r"])
    self.onet = StageONet.__new__(StageONet)
    StageBase.__init__(self.onet, stage_name="Stage ONET", stage_id=3, model=nets["o"])
    pnet = nets["p"]

    # One traced graph for every pyramid level: no per-shape retracing.
    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32),
                                  tf.TensorSpec([2], tf.int32)])
    def pnet_at(image, size):
      return pnet(tf.image.resize(image, size, method="area"))

    self.pnet_at = pnet_at

  def __call__(self, image: np.ndarray, s: DetectorSettings) -> tuple[np.ndarray, float]:
    """Rows [_, x1, y1, x2, y2, score, x * 5, y * 5] passing all thresholds,
    and the best ONet score seen (or -1 if nothing reached ONet)."""
    tf, bb = self.tf, self.bb
    h, w = image.shape[:2]
    m = 12.0 / s.min_face_size
    scales, side = [], min(h, w) * m
    while side >= 12:  # facenet-pytorch's pyramid
      scales.append(m * s.scale_factor ** len(scales))
      side *= s.scale_factor
    x = (tf.convert_to_tensor(image, tf.float32)[None] - 127.5) / 128.0
    per_scale = []
    for scale in scales:
      size = tf.constant([int(h * scale + 1), int(w * scale + 1)], tf.int32)
      reg, cls = self.pnet_at(x, size)
      b = bb.generate_bounding_box(reg, cls, s.thresholds[0])
      if len(b):
        b = bb.upscale_bboxes(b, np.asarray([scale]))
        per_scale.append(bb.smart_nms_from_bboxes(b, threshold=s.nms[0], method="union",
                                                  initial_sort=False))
    if not per_scale:
      return np.empty((0, 16)), -1.0
    b = np.concatenate(per_scale, 0)
    b = bb.smart_nms_from_bboxes(b, threshold=s.nms[1], method="union", initial_sort=True)
    b = bb.resize_to_square(b)
    b = self.rnet(images_normalized=x, bboxes_batch=b, threshold_rnet=s.thresholds[1],
                  nms_rnet=s.nms[2])
    if not len(b):
      return np.empty((0, 16)), -1.0
    # ONet without a threshold, filtered below: NMS keeps the same boxes either
    # way, and the best score tells "below threshold" from "no face".
    b = self.onet(images_normalized=x, bboxes_batch=b, threshold_onet=0.0, nms_onet=s.nms[3])
    best = float(b[:, 5].max()) if len(b) else -1.0
    return b[b[:, 5] > s.thresholds[2]], best


def _require_extra() -> None:
  """Clear message when the `align` extra is missing."""
  try:
    import lz4.frame  # noqa: F401
    import mtcnn  # noqa: F401
  except ImportError as e:
    raise ImportError(f"face detection needs the optional `mtcnn` package: {_ALIGN_EXTRA}") from e


@functools.lru_cache(maxsize=1)
def _mtcnn() -> _Mtcnn:
  _require_extra()
  return _Mtcnn()


def _check_image(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
  return image


def _detect(image: np.ndarray, settings: DetectorSettings) -> tuple[list[Detection], float]:
  h, w = image.shape[:2]
  scale = 1.0
  small = image
  if settings.detect_max_side is not None and max(h, w) > settings.detect_max_side:
    scale = settings.detect_max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    sx, sy = size[0] / w, size[1] / h
  rows, best = _mtcnn()(small, settings)
  faces = []
  for r in rows:
    box = r[1:5].astype(np.float64)
    lm = np.stack([r[6:11], r[11:16]], axis=1).astype(np.float64)
    if scale != 1.0:  # edges scale as x / f; pixel index u as (u + 0.5) / f - 0.5
      f = np.array([sx, sy])
      box = (box.reshape(2, 2) / f).reshape(-1)
      lm = (lm + 0.5) / f - 0.5
    faces.append(Detection(box=box, landmarks=lm, score=float(r[5])))
  return faces, best


def detect(image_rgb_uint8: np.ndarray,
           settings: DetectorSettings | None = None) -> list[Detection]:
  """All MTCNN faces above the thresholds, highest score first."""
  image = _check_image(image_rgb_uint8)
  faces, _ = _detect(image, settings or DetectorSettings())
  return sorted(faces, key=lambda d: -d.score)


def _select(found: list[Detection], best: float, settings: DetectorSettings,
            policy: Policy) -> list[Detection] | NoFace:
  """Faces kept by size and policy (largest first), or why none is."""
  if not found:
    if best >= 0:
      return NoFace(f"below threshold: best ONet score {best:.3f} <= {settings.thresholds[2]}")
    return NoFace("no face found")
  faces = [d for d in found if d.size >= settings.min_face_size]
  if not faces:
    biggest = max(d.size for d in found)
    return NoFace(f"face too small: {biggest:.0f} px < {settings.min_face_size:g} px")
  faces.sort(key=lambda d: -(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
  if policy == "skip_multiple" and len(faces) > 1:
    return NoFace(f"several faces (policy skip_multiple): {len(faces)}")
  if policy == "largest":
    return faces[:1]
  if policy == "most_confident":
    return [max(faces, key=lambda d: d.score)]
  return faces


def detect_and_align(image_rgb_uint8: np.ndarray, settings: DetectorSettings | None = None,
                     mode: Mode = "align", policy: Policy = "largest", output_size: int = 224,
                     *, template: str = "ffhq", margin: float = 0.0, max_outside: float = 0.02,
                     fill: tuple[int, int, int] = (0, 0, 0)) -> list[Face] | NoFace:
  """Detect, pick faces by `policy`, crop each to output_size.

  mode "align": similarity from the landmarks (`alignment_matrix`: FFHQ's
  eye/mouth rule for template "ffhq", a five-point fit for "arcface"); "box":
  the square MTCNN box plus `margin` output pixels. Crop pixels whose source lies
  outside the photograph are `fill` (never reflected or invented). A face
  whose crop has more than `max_outside` of its area outside and fills the
  frame (`tight_matrix`) is cut as the largest square inside the photograph
  (framing "tight"); otherwise it is dropped ("crop leaves the image"). policy: "largest" / "most_confident" (one face),
  "all", "skip_multiple" (NoFace if more than one face). Returns the faces
  (largest first) or NoFace(reason); a bad image never raises.
  """
  if mode not in ("align", "box"):
    raise ValueError(f"mode must be 'align' or 'box', got {mode!r}")
  if policy not in ("largest", "most_confident", "all", "skip_multiple"):
    raise ValueError(f"unknown policy {policy!r}")
  settings = settings or DetectorSettings()
  if mode == "align":
    face_template(template, output_size)  # validates the name
  image = np.asarray(image_rgb_uint8)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
    return NoFace(f"not an (H, W, 3) uint8 RGB image: {image.shape} {image.dtype}")
  h, w = image.shape[:2]
  if min(h, w) < 12 or min(h, w) < settings.min_face_size:
    return NoFace(f"image too small: {w}x{h} (min_face_size {settings.min_face_size:g})")

  try:
    found, best = _detect(image, settings)
  except ImportError:
    raise
  except Exception as e:  # noqa: BLE001  one odd photograph must not stop a batch
    return NoFace(f"detector failed: {type(e).__name__}: {e}")
  faces = _select(found, best, settings, policy)
  if isinstance(faces, NoFace):
    return faces
  found_count = sum(d.size >= settings.min_face_size for d in found)
  out, worst = [], 0.0
  for d in faces:
    if mode == "align":
      matrix = alignment_matrix(d.landmarks, output_size, template)
    else:
      matrix = box_matrix(d.box, output_size, margin)
    frac, framing = outside_fraction(matrix, (h, w), output_size), "aligned"
    if frac > max_outside:
      tight = tight_matrix(matrix, (h, w), output_size)
      if tight is None:
        worst = max(worst, frac)
        continue
      matrix, framing = tight, "tight"
      frac = outside_fraction(matrix, (h, w), output_size)
    out.append(Face(crop=warp(image, matrix, output_size, fill), box=d.box,
                    landmarks=d.landmarks, score=d.score, transform=matrix, outside=frac,
                    faces_found=found_count, framing=framing))
  if not out:
    return NoFace(f"crop leaves the image: {worst:.1%} outside > {max_outside:.1%}")
  return out
