"""Leave one training camera out (issue #38): train on the benchmark's other
two training cameras and validate on the third, so that keep-best and the dev
threshold reward what carries to a camera the model has not seen, not the
training cameras' traces. The held-out evaluation camera (`real2`) is never
used to choose anything.

A bona fide image's camera is not stored; it is recomputed from the image's
seed (`sampler.camera_of`). A fake made from a real (an aligned fake) belongs
to its real's camera; other fakes belong to none and stay in both splits.
"""

from __future__ import annotations

import numpy as np

from cmfl_jax.data.split import DataError, Split
from cmfl_jax.data.synthetic import sampler, v2

NO_CAMERA = -1


def camera_ids(filenames: list[str], made_from: np.ndarray | None, size: int,
               seed: int) -> np.ndarray:
  """Per example: the training camera (index in `v2.TRAIN_CAMERAS`) of a
  `real/<split>/<i>.png` image or of the real an aligned fake was made from,
  else `NO_CAMERA`."""
  out = np.full(len(filenames), NO_CAMERA, np.int64)
  for i, name in enumerate(filenames):
    source, split, stem = (name.split("/") + ["", ""])[:3]
    if source == "real" and split in sampler.ALIGNED_SPLITS:
      out[i] = sampler.camera_of(split, size, seed, int(stem.split(".")[0]))
  if made_from is not None:
    paired = made_from >= 0
    out[paired] = out[made_from[paired]]
  return out


def leave_camera_out(split: Split, cameras: np.ndarray, camera: int, keep: str) -> Split:
  """`keep="others"`: drop `camera`'s images (training); `keep="held_out"`:
  keep only them (validation). Fakes of no camera stay in both."""
  if not 0 <= camera < len(v2.TRAIN_CAMERAS):
    raise DataError(f"data.holdout_camera must be -1 (off) or 0-{len(v2.TRAIN_CAMERAS) - 1}, "
                    f"got {camera}")
  mine = cameras == camera
  mask = ~mine if keep == "others" else mine | (cameras == NO_CAMERA)
  out = split.select(mask)
  if not (out.labels == 1).any():
    raise DataError(f"split {split.name!r} has no bona fide image of "
                    f"{'the other cameras' if keep == 'others' else f'camera {camera}'}")
  return out
