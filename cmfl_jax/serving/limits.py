"""What an upload may be: body size, pixel count, format, completeness.

Everything here looks at bytes the client sent; nothing names or opens a
path. The pixel limit is read from the image header (PIL, no pixel decoded),
so a decompression bomb is refused before any decoder allocates for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading

from PIL import Image

from cmfl_jax.data import readers


class Rejected(Exception):
  """An upload refused, with the HTTP status to answer and why."""

  def __init__(self, status: int, reason: str):
    super().__init__(reason)
    self.status = status
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Limits:
  """`max_bytes`: request body; `max_pixels`: width x height from the header;
  `min_side`: the shorter side the model's geometry needs."""

  max_bytes: int = 20 * 2**20
  max_pixels: int = 40_000_000
  min_side: int = 1


def check_image_bytes(data: bytes, limits: Limits) -> int:
  """The image's pixel count (width x height); raises `Rejected` (413 for too
  many pixels or frames, 415 for a non-image or an unsupported format, 422
  for a too-small, truncated or corrupt image) unless `data` is an image TF's
  decoder will read. Only the header is parsed; the PNG/JPEG end is checked
  as predict checks files (`readers.truncation`)."""
  if not data:
    raise Rejected(400, "empty body: send the image bytes (or a multipart field 'image')")
  try:
    with Image.open(io.BytesIO(data)) as im:
      kind, (w, h) = im.format, im.size
      too_large = readers.pixel_reason(im, limits.max_pixels) if kind else None
  except Image.DecompressionBombError as e:
    raise Rejected(413, f"image too large ({e})") from None
  except Exception:  # noqa: BLE001 - PIL raises many types for a non-image
    raise Rejected(415, "not an image (PNG, JPEG, BMP or GIF expected)") from None
  if kind not in readers.DECODABLE_FORMATS:
    raise Rejected(415, f"unsupported image format {kind}")
  if too_large:
    raise Rejected(413, f"image {too_large}")
  if min(w, h) < limits.min_side:
    raise Rejected(422, f"image too small ({w}x{h}; min side {limits.min_side})")
  reason = readers.truncation(data)
  if reason:
    raise Rejected(422, f"not a readable image ({reason})")
  return w * h


class PixelBudget:
  """Pixels being decoded at once, across the decode threads: decoding and
  resizing costs memory in proportion to pixels (a 40-megapixel image about
  0.5 GB in float32), so the budget, not the thread count, bounds it. An
  image larger than the whole budget waits until it has it alone."""

  def __init__(self, total: int):
    self.total = int(total)
    self.used = 0
    self.peak = 0  # the most held at once (tests, logs)
    self._free = threading.Condition()

  @contextlib.contextmanager
  def hold(self, pixels: int):
    pixels = min(int(pixels), self.total)
    with self._free:
      self._free.wait_for(lambda: self.used + pixels <= self.total)
      self.used += pixels
      self.peak = max(self.peak, self.used)
    try:
      yield
    finally:
      with self._free:
        self.used -= pixels
        self._free.notify_all()
