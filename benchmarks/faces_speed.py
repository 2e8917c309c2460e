"""Images/s per core of cmfl_jax.data.face_detection (MTCNN detect + align to 224) on
the scikit-image astronaut photograph resized to 1024x1024 and 512x512, one
TensorFlow thread. Prints one JSON line.

  python benchmarks/faces_speed.py [--runs 5] [--upstream]

--upstream also times the mtcnn package's own `MTCNN().detect_faces` (which
loads its weights with joblib, i.e. pickle) on the same images, detection only.
Needs the `align` extra and scikit-image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ["TF_NUM_INTEROP_THREADS"] = "1"
os.environ["TF_NUM_INTRAOP_THREADS"] = "1"

import numpy as np
import tensorflow as tf

# Before any op runs; the environment variables above are belt and braces.
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.threading.set_intra_op_parallelism_threads(1)

from PIL import Image  # noqa: E402

from cmfl_jax.data import face_detection  # noqa: E402


def _times(fn, runs: int) -> list[float]:
  fn()  # warm-up: builds the networks and traces PNet once
  out = []
  for _ in range(runs):
    t = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 512])
  parser.add_argument("--upstream", action="store_true")
  args = parser.parse_args()

  from skimage import data
  astronaut = Image.fromarray(data.astronaut())
  settings = face_detection.DetectorSettings()
  result = {"bench": "faces_speed", "threads": 1, "runs": args.runs, "output_size": 224,
            "tensorflow": tf.__version__, "machine": platform.machine(), "sizes": {}}
  try:
    from importlib.metadata import version
    result["mtcnn"] = version("mtcnn")
  except Exception:  # noqa: BLE001
    pass
  upstream = None
  if args.upstream:
    from mtcnn import MTCNN
    upstream = MTCNN()
  for size in args.sizes:
    image = np.asarray(astronaut.resize((size, size), Image.Resampling.BICUBIC))
    found = face_detection.detect_and_align(image, settings)
    ts = _times(lambda: face_detection.detect_and_align(image, settings), args.runs)
    med = statistics.median(ts)
    row = {"median_s": round(med, 4), "min_s": round(min(ts), 4),
           "images_per_s": round(1.0 / med, 2), "faces": len(found) if found else 0}
    if upstream is not None:
      up = _times(lambda: upstream.detect_faces(image, threshold_onet=0.7), args.runs)
      row["upstream_detect_median_s"] = round(statistics.median(up), 4)
    result["sizes"][str(size)] = row
  print(json.dumps(result))


if __name__ == "__main__":
  main()
