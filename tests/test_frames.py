"""Animated images: every path that decodes a user's file counts the frames,
so a small file of many large frames is refused before any decoder runs
(the service, predict and what uses its loader: explain and calibrate,
align, and the training-data checks)."""

from __future__ import annotations

import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cmfl_jax.data import face_detection, ops, readers
from cmfl_jax.serving import limits

MAX_PIXELS = 100_000  # one 200x200 frame (40 000) fits, ten do not


def _gif(frames: int, side: int = 200) -> bytes:
  rng = np.random.default_rng(0)
  images = [Image.fromarray(rng.integers(0, 255, (side, side, 3), np.uint8)).convert("P")
            for _ in range(frames)]
  buffer = io.BytesIO()
  images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=40)
  return buffer.getvalue()


@pytest.fixture(scope="module")
def gifs(tmp_path_factory):
  root = tmp_path_factory.mktemp("gifs")
  (root / "one.gif").write_bytes(_gif(1))
  (root / "many.gif").write_bytes(_gif(10))
  return root


def test_every_decoding_path_refuses_many_frames(gifs):
  one, many = str(gifs / "one.gif"), str(gifs / "many.gif")
  assert Image.open(many).n_frames == 10
  # Training-data checks, and predict's (so explain's and calibrate's) file check.
  assert readers.check_image_file(one, 32, MAX_PIXELS, full_decode=True) is None
  reason = readers.check_image_file(many, 32, MAX_PIXELS, full_decode=False)
  assert reason == "too large (10 frames of 200x200 > 100000 pixels in all; send one frame)"
  # The service.
  limits.check_image_bytes(_gif(1), limits.Limits(max_pixels=MAX_PIXELS))
  with pytest.raises(limits.Rejected) as e:
    limits.check_image_bytes(_gif(10), limits.Limits(max_pixels=MAX_PIXELS))
  assert e.value.status == 413 and "10 frames" in e.value.reason
  # align (and the service's --align): PIL's decode.
  assert face_detection.load_rgb(one, max_pixels=MAX_PIXELS).shape == (200, 200, 3)
  assert "10 frames" in face_detection.load_rgb(many, max_pixels=MAX_PIXELS).reason


def test_predict_loader_reports_the_animation_without_decoding_it(gifs):
  """predict's streamed loader (also explain's and calibrate's): an error row."""
  from cmfl_jax.scoring import files
  data = ml_collections.ConfigDict({"max_pixels": MAX_PIXELS, "image_size": 32, "aligned": False,
                                    "min_side": 32})
  rows = list(files.file_rows([str(gifs / "one.gif"), str(gifs / "many.gif")],
                                ops.Geometry(32, False), data, 2))
  assert rows[0]["image"].shape == (32, 32, 3)
  assert rows[1]["error"].startswith("error: too large (10 frames of 200x200")
