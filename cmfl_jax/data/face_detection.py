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

Coordinates are pixel indices (x right, y down, pixel centres at integers);
landmarks are (5, 2) x, y in MTCNN's order: eye on the image's left, eye on
the image's right, nose, mouth corner left, mouth corner right.

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
from typing import Literal, Sequence

import numpy as np
from PIL import Image, ImageOps

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
# Templates (`TEMPLATES`, after the FFHQ rule) and geometry: numpy + PIL.

# insightface / ArcFace 5-point template in its 112x112 frame (x, y).
ARCFACE_112 = np.array([
    [38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
    [41.5493, 92.3655], [70.7299, 92.2041]])


def _symmetric_mean_face() -> np.ndarray:
  """ArcFace's points as fractions of the frame, mirrored onto themselves so
  that a flipped photograph aligns to the flipped crop."""
  p = ARCFACE_112 / 112.0
  mirror = p[[1, 0, 2, 4, 3]] * [-1.0, 1.0] + [1.0, 0.0]
  return (p + mirror) / 2.0


def face_template(name: str = "ffhq", output_size: int = 224) -> np.ndarray:
  """Template landmarks (5, 2) in pixel indices of an output_size crop."""
  if name not in TEMPLATES:
    raise ValueError(f"unknown template {name!r}; known: {sorted(TEMPLATES)}")
  return TEMPLATES[name] * output_size - 0.5


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Least-squares similarity (rotation, uniform scale, shift; no reflection)
  taking points src (N, 2) to dst (N, 2), as a (2, 3) matrix. Four unknowns:
  x' = a x - b y + tx, y' = b x + a y + ty."""
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
    raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
  n = len(src)
  a = np.zeros((2 * n, 4))
  a[0::2] = np.stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)], 1)
  a[1::2] = np.stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)], 1)
  (ca, cb, tx, ty), *_ = np.linalg.lstsq(a, dst.reshape(-1), rcond=None)
  return np.array([[ca, -cb, tx], [cb, ca, ty]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Points (N, 2) through a (2, 3) affine matrix."""
  points = np.asarray(points, np.float64)
  return points @ matrix[:, :2].T + matrix[:, 2]


def _invert(matrix: np.ndarray) -> np.ndarray:
  m = np.vstack([matrix, [0.0, 0.0, 1.0]])
  return np.linalg.inv(m)[:2]


def outside_fraction(matrix: np.ndarray, image_hw: tuple[int, int], output_size: int) -> float:
  """Share of the crop's pixels whose source point lies outside the image."""
  inv = _invert(matrix)
  g = np.arange(output_size, dtype=np.float64)
  xs, ys = np.meshgrid(g, g)
  sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
  sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
  h, w = image_hw
  out = (sx < -0.5) | (sx > w - 0.5) | (sy < -0.5) | (sy > h - 0.5)
  return float(out.mean())


def warp(image: np.ndarray, matrix: np.ndarray, output_size: int = 224,
         fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
  """Crop (output_size, output_size, 3) uint8 with crop = matrix @ source.

  Bicubic; where the crop shrinks the face by more than 1.25x the source
  region is first downscaled with PIL's antialiasing resize, so large faces
  do not alias (the spectrum stream would see it). Pixels from outside the
  image get `fill`.
  """
  h, w = image.shape[:2]
  pil = Image.fromarray(image)
  m = np.asarray(matrix, np.float64)
  scale = np.sqrt(abs(np.linalg.det(m[:, :2])))  # crop px per source px
  if scale < 0.8:
    inv = _invert(m)
    corners = apply_transform(inv, np.array([[-0.5, -0.5], [output_size - 0.5, -0.5],
                                             [-0.5, output_size - 0.5],
                                             [output_size - 0.5, output_size - 0.5]]))
    pad = 3.0 / scale
    x0 = int(np.clip(np.floor(corners[:, 0].min() - pad), 0, w))
    y0 = int(np.clip(np.floor(corners[:, 1].min() - pad), 0, h))
    x1 = int(np.clip(np.ceil(corners[:, 0].max() + pad), 0, w))
    y1 = int(np.clip(np.ceil(corners[:, 1].max() + pad), 0, h))
    if x1 > x0 and y1 > y0:
      nw, nh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
      pil = pil.crop((x0, y0, x1, y1)).resize((nw, nh), Image.Resampling.BICUBIC)
      fx, fy = nw / (x1 - x0), nh / (y1 - y0)
      # source index x = (u + 0.5) / fx - 0.5 + x0 for small-image index u.
      to_src = np.array([[1 / fx, 0.0, 0.5 / fx - 0.5 + x0], [0.0, 1 / fy, 0.5 / fy - 0.5 + y0]])
      m = m @ np.vstack([to_src, [0.0, 0.0, 1.0]])
  inv = _invert(m)
  # PIL works in continuous coordinates (pixel centres at +0.5): it samples the
  # input at A @ (out + 0.5) + c, so shift the index-space inverse accordingly.
  c = inv[:, 2] + 0.5 - inv[:, :2] @ [0.5, 0.5]
  coeffs = (inv[0, 0], inv[0, 1], c[0], inv[1, 0], inv[1, 1], c[1])
  out = pil.transform((output_size, output_size), Image.Transform.AFFINE, coeffs,
                      resample=Image.Resampling.BICUBIC, fillcolor=tuple(fill))
  return np.asarray(out, np.uint8)


def ffhq_matrix(landmarks: np.ndarray, output_size: int = 224) -> np.ndarray:
  """FFHQ's alignment rule (ffhq-dataset `recreate_aligned_images`) with
  MTCNN's eyes and mouth corners in place of dlib's: the crop is the square
  `quad` FFHQ would cut, mapped onto the output. Side max(4 * eye distance,
  3.6 * eye-to-mouth), centre 0.1 eye-to-mouth below the eye midpoint, tilt
  from eye-to-eye combined with eye-to-mouth. StyleGAN faces come out of
  their generator framed like this, so real crops match them."""
  lm = np.asarray(landmarks, np.float64)
  eye_avg, mouth_avg = (lm[0] + lm[1]) / 2, (lm[3] + lm[4]) / 2
  e2e, e2m = lm[1] - lm[0], mouth_avg - eye_avg
  x = e2e - np.flipud(e2m) * [-1, 1]
  x = x / max(np.hypot(*x), 1e-12) * max(np.hypot(*e2e) * 2.0, np.hypot(*e2m) * 1.8)
  y = np.flipud(x) * [-1, 1]
  c = eye_avg + e2m * 0.1
  top_left, top_right = c - x - y, c + x - y
  # FFHQ samples (quad + 0.5) in PIL's continuous coordinates: quad corners
  # are pixel indices that land on the output's outer edge (index -0.5).
  return similarity_transform(np.stack([top_left, top_right]),
                              np.array([[-0.5, -0.5], [output_size - 0.5, -0.5]]))


def _ffhq_template() -> np.ndarray:
  """Where FFHQ's rule puts the symmetric mean face (fractions of the side)."""
  mean = _symmetric_mean_face() * 1000.0
  return (apply_transform(ffhq_matrix(mean, 1000), mean) + 0.5) / 1000.0


# Where an average face's landmarks land, as fractions of the output side
# (0 = left/top edge, 1 = right/bottom edge):
# "ffhq" (default): FFHQ's framing (`ffhq_matrix`): the whole face with
#   forehead, hair line, chin and some background; eye distance 0.24 of the
#   side, eyes at height 0.47, mouth at 0.75; a 224 crop looks like a
#   downscaled FFHQ / StyleGAN image. Faces with other proportions land a
#   little differently: FFHQ's rule uses eyes and mouth, not a point fit.
# "arcface": insightface's 112x112 recognition template, scaled; tight (eye
#   distance 0.31, eyes at 0.46, mouth at 0.82): chin and forehead are cut.
# Both are made exactly left-right symmetric.
TEMPLATES: dict[str, np.ndarray] = {
    "ffhq": _ffhq_template(),
    "arcface": _symmetric_mean_face(),
}


def alignment_matrix(landmarks: np.ndarray, output_size: int = 224,
                     template: str = "ffhq") -> np.ndarray:
  """Source -> crop similarity. "ffhq": FFHQ's eye/mouth rule (`ffhq_matrix`);
  "arcface": least squares of the five landmarks onto the ArcFace template,
  as insightface does."""
  if template == "ffhq":
    return ffhq_matrix(landmarks, output_size)
  return similarity_transform(landmarks, face_template(template, output_size))


def box_matrix(box: Sequence[float], output_size: int = 224, margin: float = 0.0) -> np.ndarray:
  """facenet-pytorch `extract_face` geometry, but square: the box's longer
  side, centred, plus `margin` pixels *of the output* in total (half each
  side), scaled to output_size. (facenet-pytorch stretches non-square boxes.)"""
  if not 0 <= margin < output_size:
    raise ValueError(f"margin must be in [0, output_size), got {margin}")
  x1, y1, x2, y2 = (float(v) for v in box)
  side = max(x2 - x1, y2 - y1)
  side += margin * side / (output_size - margin)
  cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
  s = output_size / side
  # The square's outer edge (index cx - side/2 - 0.5) -> the crop's (index -0.5).
  return np.array([[s, 0.0, -0.5 - s * (cx - side / 2 - 0.5)],
                   [0.0, s, -0.5 - s * (cy - side / 2 - 0.5)]])


# A crop at least this share of the photograph's shorter side that leaves the
# photograph means the face fills the frame (LFW/CelebA crops, generator outputs).
TIGHT_FILL = 0.75


def tight_matrix(matrix: np.ndarray, image_hw: tuple[int, int], output_size: int
                 ) -> np.ndarray | None:
  """For a face that fills the frame: the axis-aligned square inside the
  photograph, as large as the aligned crop (at most the shorter side),
  centred as near the aligned crop's centre as the photograph allows; no
  pixel is invented. None when the crop is small against the photograph
  (the face is cut by the edge, not framed tightly)."""
  h, w = image_hw
  scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
  side = output_size / scale
  if side < TIGHT_FILL * min(h, w):
    return None
  side = min(side, h, w)
  cx, cy = apply_transform(_invert(matrix), [[(output_size - 1) / 2] * 2])[0]
  x0 = float(np.clip(cx + 0.5 - side / 2, 0, w - side))
  y0 = float(np.clip(cy + 0.5 - side / 2, 0, h - side))
  return box_matrix((x0, y0, x0 + side, y0 + side), output_size)


# ----------------------------------------------------------------------------
# Loading.

def load_rgb(path: str | os.PathLike, max_pixels: int = 64_000_000,
             max_bytes: int = 200_000_000) -> np.ndarray | NoFace:
  """(H, W, 3) uint8 RGB, EXIF orientation applied (first frame of animations,
  alpha dropped), or NoFace(reason) for files that are missing, empty, too
  large, not images, corrupt or truncated."""
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
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        if w * h > max_pixels:
          return NoFace(f"image too large: {w}x{h} > {max_pixels} pixels")
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
