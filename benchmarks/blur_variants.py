"""The OpenCV variants considered for the train augmentation (BENCHMARKS.md,
"Train path at 224x224"): time per 224x224x3 image (sigma 1.7, one thread)
and the largest difference from scipy.ndimage.gaussian_filter (truncate 4,
'reflect', rounded) over sigma in (0, 2]; and OpenCV's JPEG round trip
against TensorFlow's `adjust_jpeg_quality`.

  python benchmarks/blur_variants.py
"""

import json
import time

import cv2
import numpy as np
import tensorflow as tf
from scipy.ndimage import gaussian_filter

from cmfl_jax.data import ops

cv2.setNumThreads(1)


def _taps(sigma):
  r = np.arange(-int(4 * sigma + 0.5), int(4 * sigma + 0.5) + 1)
  k = np.exp(-0.5 * (r / sigma) ** 2)
  return k / k.sum()


def sep_u8(img, s):
  return cv2.sepFilter2D(img, cv2.CV_8U, _taps(s), _taps(s), borderType=cv2.BORDER_REFLECT)


def sep_f32(img, s):
  out = cv2.sepFilter2D(img, cv2.CV_32F, _taps(s), _taps(s), borderType=cv2.BORDER_REFLECT)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def gaussian_blur_u8(img, s):
  k = 2 * int(4 * s + 0.5) + 1
  return cv2.GaussianBlur(img, (k, k), s, borderType=cv2.BORDER_REFLECT)


def ms(fn, *args, n=200):
  fn(*args)
  start = time.perf_counter()
  for _ in range(n):
    fn(*args)
  return round((time.perf_counter() - start) / n * 1e3, 3)


def main():
  img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
  sigmas = np.linspace(0.05, 2.0, 40)
  refs = {s: np.round(gaussian_filter(img.astype(float), (s, s, 0), mode="reflect", truncate=4))
          for s in sigmas}
  for fn in (sep_u8, sep_f32, gaussian_blur_u8):
    err = max(int(np.abs(fn(img, s).astype(int) - refs[s]).max()) for s in sigmas)
    print(json.dumps({"blur": fn.__name__, "ms": ms(fn, img, 1.7), "max_abs_diff_vs_scipy": err}))
  face = ops.decode_image(tf.io.encode_jpeg(
      np.asarray(gaussian_filter(img.astype(float), (3, 3, 0)), np.uint8), quality=95)).numpy()

  def cv2_jpeg(x, q=80):
    return cv2.imdecode(cv2.imencode(".jpg", x[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])[1],
                        cv2.IMREAD_COLOR)[..., ::-1]

  want = tf.image.adjust_jpeg_quality(face, 80).numpy()
  encoded_by_cv2 = cv2.imencode(".jpg", face[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])[1]
  print(json.dumps({
      "jpeg": "opencv round trip, q80", "ms": ms(cv2_jpeg, face),
      "tf_adjust_jpeg_quality_ms": ms(lambda x: tf.image.adjust_jpeg_quality(x, 80).numpy(), face),
      "cv2_encoded_tf_decoded_equals_tf": bool(np.array_equal(
          tf.io.decode_jpeg(encoded_by_cv2.tobytes()).numpy(), want)),
      "max_abs_diff_of_cv2_round_trip_vs_tf": int(np.abs(cv2_jpeg(face).astype(int) - want).max())}))


if __name__ == "__main__":
  main()
