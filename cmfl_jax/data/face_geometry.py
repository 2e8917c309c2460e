"""Face crop geometry: the landmark templates (FFHQ's framing by default),
similarity alignment, box and tight crops, and the warp that renders them;
numpy + PIL only, no detector.

Coordinates are pixel indices (x right, y down, pixel centres at integers);
landmarks are (5, 2) x, y in MTCNN's order: eye on the image's left, eye on
the image's right, nose, mouth corner left, mouth corner right.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

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
