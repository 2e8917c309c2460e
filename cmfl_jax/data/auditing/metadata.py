"""Per-file storage metadata for the data audit: header fields (format, JPEG
quality and tables, subsampling, size, bit depth, EXIF/ICC/dpi; no full pixel
decode), a sha1 of the bytes and a 64-bit perceptual hash (from a reduced
decode), cached per file in `file_cache` (table "files") while the file keeps
its size and mtime. Nothing here stops on a bad file: its record says why."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from PIL import Image, JpegImagePlugin

from cmfl_jax.data import file_cache
from cmfl_jax.data.auditing import jpeg_quality

# Bump when a record's fields or the hash definition change: old cache rows are re-read.
CACHE_VERSION = 1


# --------------------------------------------------------------------------------------
# Perceptual hash
# --------------------------------------------------------------------------------------

def _dct_rows(n: int, k: int) -> np.ndarray:
  """First k rows of the orthonormal DCT-II matrix of size n."""
  i = np.arange(n)
  m = np.cos(np.pi * (2 * i[None, :] + 1) * np.arange(k)[:, None] / (2 * n)) * math.sqrt(2 / n)
  m[0] /= math.sqrt(2)
  return m


_DCT8 = _dct_rows(32, 8)
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def phash(im: Image.Image) -> int:
  """64-bit DCT perceptual hash (imagehash.phash's definition: 32x32 grey, top-left 8x8
  DCT coefficients above their median). Robust to resizing and re-encoding. For JPEG
  it asks libjpeg for a reduced decode (Image.draft, down to 1/8 scale) first."""
  if im.format == "JPEG":
    im.draft("L", (64, 64))
  if im.mode in _HIGH_BIT_MODES:
    grey = Image.fromarray(np.asarray(im, np.float32))
  elif im.mode == "L":
    grey = im
  else:
    grey = im.convert("L")
  small = grey.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0)
  x = np.asarray(small, np.float64)
  low = _DCT8 @ x @ _DCT8.T
  bits = (low > np.median(low)).ravel()
  return int.from_bytes(np.packbits(bits).tobytes(), "big")


# --------------------------------------------------------------------------------------
# Per-file record
# --------------------------------------------------------------------------------------

_SAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
_MODE_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def _subsampling(im: Image.Image) -> str:
  name = _SAMPLING.get(JpegImagePlugin.get_sampling(im))
  if name:
    return name
  layer = getattr(im, "layer", [])
  if len(layer) == 1:
    return "grey"
  if len(layer) == 4:
    return "cmyk"
  if len(layer) == 3:
    (_, h0, v0, _), (_, h1, v1, _) = layer[0], layer[1]
    if (h1, v1) == (1, 1):
      other = {(4, 1): "4:1:1", (1, 2): "4:4:0", (4, 2): "4:1:0"}.get((h0, v0))
      if other:
        return other
    return f"{h0}x{v0},{h1}x{v1}"
  return "other"


def _bit_depth(im: Image.Image, data: bytes) -> int:
  if im.format == "PNG" and data[12:16] == b"IHDR":
    return int(data[24])  # per sample, from IHDR
  if im.format == "JPEG" and getattr(im, "bits", 0):
    return int(im.bits)  # SOF sample precision
  return _MODE_BITS.get(im.mode, 8)


def _lossless(im: Image.Image, data: bytes) -> str:
  fmt = im.format
  if fmt == "JPEG":
    return "lossy"
  if fmt in ("PNG", "BMP", "GIF", "PPM", "TGA"):
    return "lossless"
  if fmt == "WEBP":
    head = data[:4096]
    if data[12:16] == b"VP8L" or (b"VP8L" in head and b"VP8 " not in head):
      return "lossless"
    return "lossy"
  if fmt == "TIFF":
    return "lossy" if "jpeg" in str(im.info.get("compression", "")).lower() else "lossless"
  return "unknown"


def _header_metadata(im: Image.Image, data: bytes) -> dict[str, Any]:
  w, h = im.size
  info = im.info
  rec: dict[str, Any] = {
      "format": im.format or "unknown", "width": int(w), "height": int(h),
      "mode": im.mode, "bit_depth": _bit_depth(im, data),
      "bytes_per_pixel": len(data) / max(w * h, 1),
      "exif": bool(info.get("exif")), "icc": bool(info.get("icc_profile")),
      "dpi": "dpi" in info, "lossless": _lossless(im, data),
      "jpeg_quality": None, "jpeg_table": None, "subsampling": None, "progressive": None,
  }
  if im.format == "JPEG":
    qt = getattr(im, "quantization", None) or {}
    layer = getattr(im, "layer", [])
    luma_id = layer[0][3] if layer and layer[0][3] in qt else (min(qt) if qt else None)
    if luma_id is not None:
      q, exact = jpeg_quality.estimate_jpeg_quality(qt[luma_id])
      rec["jpeg_quality"], rec["jpeg_table"] = q, "ijg" if exact else "custom"
    rec["subsampling"] = _subsampling(im)
    rec["progressive"] = bool(info.get("progressive") or info.get("progression"))
  return rec


def read_file_record(path: str) -> dict[str, Any]:
  """Header metadata, sha1 of the bytes and pHash of one file.

  Never raises for a bad file: the record then has ok=False and a reason (missing,
  empty, not an image, truncated pixel data...), with whatever was read before.
  """
  rec: dict[str, Any] = {"ok": False, "reason": None}
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    rec["reason"] = "missing file"
    return rec
  except OSError as e:
    rec["reason"] = f"cannot read file ({type(e).__name__}: {e})"
    return rec
  rec["bytes"] = len(data)
  if not data:
    rec["reason"] = "empty file"
    return rec
  rec["sha1"] = hashlib.sha1(data).hexdigest()
  try:
    im = Image.open(io.BytesIO(data))
  except Exception as e:  # noqa: BLE001 - any decoder error is a finding, not a crash
    rec["reason"] = f"not a readable image ({type(e).__name__}: {e})"
    return rec
  with im:
    try:
      rec.update(_header_metadata(im, data))
    except Exception as e:  # noqa: BLE001
      rec["reason"] = f"unreadable header ({type(e).__name__}: {e})"
      return rec
    try:
      rec["phash"] = f"{phash(im):016x}"
    except Exception as e:  # noqa: BLE001
      rec["reason"] = f"pixel data unreadable ({type(e).__name__}: {e})"
      return rec
  rec["ok"] = True
  return rec


def _safe_read(path: str) -> dict[str, Any]:
  try:
    return read_file_record(path)
  except Exception as e:  # noqa: BLE001 - a bug on one odd file must not stop the audit
    return {"ok": False, "reason": f"audit error ({type(e).__name__}: {e})"}


# --------------------------------------------------------------------------------------
# Cache (the per-file cache of `file_cache`, table "files")
# --------------------------------------------------------------------------------------

default_cache_path = file_cache.default_cache_path


class MetadataCache(file_cache.FileCache):
  """File records keyed by (absolute path, size, mtime_ns); a row whose size, mtime or
  CACHE_VERSION differ is a miss. ':memory:' keeps nothing between runs."""

  def __init__(self, path: str | os.PathLike | None = None):
    super().__init__(path, "files", CACHE_VERSION)


def read_records(paths: Iterable[str], cache_path: str | os.PathLike | None = None,
                 workers: int | None = None) -> tuple[dict[str, dict], dict[str, Any]]:
  """absolute path -> record for every path, opening only files the cache does not know
  at their current size and mtime. Reading runs in a thread pool (PIL and hashlib
  release the GIL). Returns (records, stats)."""
  t0 = time.perf_counter()
  uniq = list(dict.fromkeys(os.path.abspath(os.fspath(p)) for p in paths))
  _, keys, problems = file_cache.stat_keys(uniq)
  return read_records_after_stat(uniq, keys, problems, cache_path, workers,
                                 time.perf_counter() - t0)


def read_records_after_stat(uniq: list[str], keys: Mapping[str, file_cache.Key],
                            problems: Mapping[str, str], cache_path: str | os.PathLike | None,
                            workers: int | None,
                            stat_s: float) -> tuple[dict[str, dict], dict[str, Any]]:
  """read_records once every file is stat'ed: keys and problems of file_cache.stat_keys."""
  records: dict[str, dict] = {p: {"ok": False, "reason": r} for p, r in problems.items()}
  t_stat = time.perf_counter()
  cache = MetadataCache(cache_path)
  try:
    hits = cache.get_many(keys)
    records.update(hits)
    t_lookup = time.perf_counter()
    misses = [p for p in keys if p not in hits]
    workers = workers or min(32, 2 * (os.cpu_count() or 1))
    batches = [misses[i:i + 64] for i in range(0, len(misses), 64)]
    pending: list[tuple[str, int, int, dict]] = []
    t_write = 0.0
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
      futures = [pool.submit(lambda b: [(p, _safe_read(p)) for p in b], b) for b in batches]
      for fut in cf.as_completed(futures):
        for p, rec in fut.result():
          records[p] = rec
          pending.append((p, *keys[p], rec))
        if len(pending) >= 5000:
          tw = time.perf_counter()
          cache.put_many(pending)
          pending, t_write = [], t_write + time.perf_counter() - tw
    tw = time.perf_counter()
    if pending:
      cache.put_many(pending)
    t_write += time.perf_counter() - tw
    t_end = time.perf_counter()
  finally:
    cache.close()
  stats = {
      "unique_files": len(uniq), "from_cache": len(hits), "read": len(misses),
      "unreadable": sum(not r.get("ok") for r in records.values()), "workers": workers,
      "cache_path": cache.path,
      "seconds": {"stat": stat_s, "cache_lookup": t_lookup - t_stat,
                  "read": t_end - t_lookup - t_write, "cache_write": t_write},
  }
  return records, stats
