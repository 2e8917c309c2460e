"""Reading what the user gives: protocol CSVs, image folders, image headers.
No TensorFlow (PIL reads headers and, for checks, pixels); the verdicts of
the file check are cached per file (`file_cache`)."""

from __future__ import annotations

import concurrent.futures
import csv
import os
import struct
import zlib
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from cmfl_jax.data import file_cache
from cmfl_jax.data.split import DataError, Files, Split, check_pairs, pair_indices

PROTOCOL_HEADER = ("subject", "filename", "attack_type")
#: Optional 4th protocol column: the filename of the bona fide image (of the
#: same CSV) a synthetic one was made from, for aligned training pairs.
MADE_FROM = "made_from"
#: Optional file `<root>/<split>/made_from.csv` of the folder layout, columns
#: `fake,made_from`: paths relative to `<root>/<split>`.
FOLDER_PAIRS = "made_from.csv"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
#: Formats tf.io.decode_image reads (as named by PIL).
DECODABLE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "MPO")
REAL_FOLDER = "real"


class UnderRoot:
  """Joins protocol filenames to the data root, refusing paths that escape it,
  also through symlinks: the result is the file's real path. The root and each
  directory are resolved once (`file_cache.RealPaths`), so a file costs one
  lstat, not a realpath."""

  def __init__(self, root: str):
    self.root = root
    self.real = os.path.realpath(root)
    self._prefix = os.path.join(self.real, "")
    self._real_paths = file_cache.RealPaths()

  def __call__(self, relative: str, where: str) -> str:
    if not relative:
      raise DataError(f"{where}: empty filename")
    if os.path.isabs(relative):
      raise DataError(f"{where}: absolute path {relative!r} not allowed; filenames are relative "
                      "to the data root")
    full = self._real_paths(os.path.join(self.real, relative))
    if full != self.real and not full.startswith(self._prefix):
      raise DataError(f"{where}: filename {relative!r} escapes the data root {self.root!r}")
    return full


def read_protocol_csv(csv_path: str, data_root: str, name: str | None = None) -> Split:
  """Reads an official-format protocol CSV: header `subject,filename,attack_type`;
  empty attack_type = bona fide, anything else = attack (its value = generator).
  An optional 4th column `made_from` names, for a synthetic image, the bona
  fide image of the same CSV it was made from (an aligned training pair)."""
  if not os.path.isfile(csv_path):
    raise DataError(f"protocol file not found: {csv_path}")
  paths, labels, gens, subjects, made_from = [], [], [], [], []
  resolve = UnderRoot(data_root)
  with open(csv_path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header[:3]) != PROTOCOL_HEADER:
      raise DataError(f"{csv_path}:1: header must be {','.join(PROTOCOL_HEADER)}, got {header}")
    paired = len(header) > 3 and header[3].strip() == MADE_FROM
    for lineno, row in enumerate(reader, start=2):
      if not row or all(not c.strip() for c in row):
        continue
      if len(row) < 3:
        raise DataError(f"{csv_path}:{lineno}: expected 3 columns "
                        f"({','.join(PROTOCOL_HEADER)}), got {len(row)}: {row}")
      attack = row[2].strip()
      paths.append(resolve(row[1].strip(), f"{csv_path}:{lineno}"))
      labels.append(0 if attack else 1)
      gens.append(attack or "real")
      subjects.append(row[0].strip())
      source = row[3].strip() if paired and len(row) > 3 else ""
      made_from.append(resolve(source, f"{csv_path}:{lineno}") if source else None)
  if not paths:
    raise DataError(f"{csv_path}: no examples")
  split = Split(name or os.path.splitext(os.path.basename(csv_path))[0],
                np.asarray(labels, np.int32), np.asarray(gens), Files(np.asarray(paths)),
                subjects=np.asarray(subjects),
                made_from=pair_indices(paths, made_from, csv_path))
  check_pairs(split)
  return split


def read_image_folder(root: str, split: str) -> Split:
  """Folder layout `root/<split>/real/**` (bona fide) and `root/<split>/<generator>/**`
  (attacks, generator = folder name); files with image extensions, sorted."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise DataError(f"image folder {split_dir} not found (expected <root>/<split>/<real|generator>/)")
  paths, labels, gens = [], [], []
  for gen in sorted(os.listdir(split_dir)):
    gen_dir = os.path.join(split_dir, gen)
    if not os.path.isdir(gen_dir):
      continue
    for dirpath, dirnames, filenames in os.walk(gen_dir):
      dirnames.sort()
      for fn in sorted(filenames):
        if fn.lower().endswith(IMAGE_EXTENSIONS):
          paths.append(os.path.join(dirpath, fn))
          labels.append(1 if gen == REAL_FOLDER else 0)
          gens.append(gen)
  if not paths:
    raise DataError(f"no images under {split_dir}")
  out = Split(split, np.asarray(labels, np.int32), np.asarray(gens), Files(np.asarray(paths)),
              made_from=_folder_pairs(split_dir, paths))
  check_pairs(out)
  return out


def _folder_pairs(split_dir: str, paths: Sequence[str]) -> np.ndarray | None:
  """`Split.made_from` from the folder's optional `made_from.csv`."""
  pairs_csv = os.path.join(split_dir, FOLDER_PAIRS)
  if not os.path.isfile(pairs_csv):
    return None
  resolve = UnderRoot(split_dir)
  real = {os.path.realpath(p): p for p in paths}
  source_of: dict[str, str] = {}
  with open(pairs_csv, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["fake", MADE_FROM]:
      raise DataError(f"{pairs_csv}:1: header must be fake,{MADE_FROM}, got {header}")
    for lineno, row in enumerate(reader, start=2):
      if not row or all(not c.strip() for c in row):
        continue
      if len(row) < 2:
        raise DataError(f"{pairs_csv}:{lineno}: expected 2 columns (fake,{MADE_FROM}), got {row}")
      where = f"{pairs_csv}:{lineno}"
      fake, source = resolve(row[0].strip(), where), resolve(row[1].strip(), where)
      if fake not in real:
        raise DataError(f"{where}: {row[0].strip()!r} is not an image of the split")
      source_of[real[fake]] = real.get(source, source)
  return pair_indices(list(paths), [source_of.get(p) for p in paths], pairs_csv)


def collect_image_paths(inputs: Iterable[str]) -> list[str]:
  """Files as given; folders expanded recursively (sorted) to image files."""
  out = []
  for p in inputs:
    if os.path.isdir(p):
      for dirpath, dirnames, filenames in os.walk(p):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames)
                if f.lower().endswith(IMAGE_EXTENSIONS)]
    else:
      out.append(p)
  return out


def pixel_reason(im: Image.Image, max_pixels: int) -> str | None:
  """Why an opened image (header only) has too many pixels, or None. Frames
  count: an animation's frames together must fit `max_pixels`, so that no
  decoder (TF keeps the first frame today, another may not) can be made to
  hold many large frames from a small file. Counting GIF frames walks their
  headers; no pixel is decoded."""
  w, h = im.size
  frames = int(getattr(im, "n_frames", 1) or 1)
  if w * h > max_pixels:
    return f"too large ({w}x{h} > {max_pixels} pixels; decompression bomb?)"
  if w * h * frames > max_pixels:
    return (f"too large ({frames} frames of {w}x{h} > {max_pixels} pixels in all; "
            "send one frame)")
  return None


def check_image_file(path: str, min_side: int, max_pixels: int, full_decode: bool) -> str | None:
  """Why `path` cannot be used, or None. Never raises.

  Reads the header (format, size; no pixel is decoded) and, with `full_decode`,
  every pixel, which is the only way to find truncated files before they break
  an epoch.
  """
  try:
    size = os.path.getsize(path)
  except OSError:
    return "missing file"
  if size == 0:
    return "empty (0-byte) file"
  try:
    with Image.open(path) as im:
      if im.format not in DECODABLE_FORMATS:
        return f"unsupported image format {im.format}"
      w, h = im.size
      too_large = pixel_reason(im, max_pixels)
      if too_large:
        return too_large
      if min(w, h) < min_side:
        return f"too small ({w}x{h}; min side {min_side})"
      if full_decode:
        im.load()
  except Exception as e:  # noqa: BLE001 - any decoder failure means "unusable"
    return f"not a readable image ({type(e).__name__}: {e})"
  return None


#: The cache table of `check_image_files`; bump the version when a verdict's meaning changes.
CHECK_TABLE, CHECK_VERSION = "checks", 2  # 2: frames counted


def _verdict_key(full_decode: bool, min_side: int, max_pixels: int) -> str:
  return f"{'decode' if full_decode else 'header'}:{min_side}:{max_pixels}"


def check_image_files(paths: Sequence[str], min_side: int, max_pixels: int, full_decode: bool,
                      cache_path: str | os.PathLike | None = None,
                      workers: int | None = None) -> list[str | None]:
  """`check_image_file` of every path (reasons, None = usable), opening only the
  files whose verdict the per-file cache does not hold for their current size
  and mtime and these check parameters (a "decode" verdict also answers, and
  is preferred by, a "header" request). Every file is stat'ed each time: a
  missing file is always reported, never cached. cache_path: see
  `file_cache.resolve_path` (file_cache.MEMORY: no cache)."""
  names, keys, reasons = file_cache.stat_keys(paths, real=True)
  reasons = dict(reasons)
  todo = {n: k for n, k in keys.items() if n not in reasons}
  want = _verdict_key(full_decode, min_side, max_pixels)
  # A decode verdict answers a header request too, and knows more (damaged pixels).
  accepted = (_verdict_key(True, min_side, max_pixels),) + (() if full_decode else (want,))
  with file_cache.FileCache(cache_path, CHECK_TABLE, CHECK_VERSION) as cache:
    rows = cache.get_many(todo)
    for name, row in rows.items():
      hit = next((k for k in accepted if k in row), None)
      if hit is not None:
        reasons[name] = row[hit]
    misses = [n for n in todo if n not in reasons]
    if misses:
      check = lambda n: check_image_file(n, min_side, max_pixels, full_decode)  # noqa: E731
      with concurrent.futures.ThreadPoolExecutor(workers or max(4, os.cpu_count() or 1)) as pool:
        found = list(pool.map(check, misses))
      reasons.update(zip(misses, found))
      cache.put_many((n, *todo[n], {**rows.get(n, {}), want: r}) for n, r in zip(misses, found)
                     if r != "missing file" and file_cache.current_key(n) == todo[n])
  return [reasons[n] for n in names]


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def truncation(data: bytes) -> str | None:
  """Why TF's decoder will refuse a PNG or JPEG whose header is fine, found
  without decoding: the file ends before its image data does (PNG: no
  complete IEND chunk, JPEG: no end-of-image marker after the first scan) or
  a critical PNG chunk fails its CRC (libpng refuses those too). Other
  formats: None; what this misses is caught when decoding."""
  if data.startswith(_PNG_SIGNATURE):
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
      length, kind = struct.unpack(">I4s", data[pos:pos + 8])
      end = pos + 12 + length
      if end > len(data):
        break
      if kind[:1].isupper() and zlib.crc32(memoryview(data)[pos + 4:end - 4]) != int.from_bytes(
          data[end - 4:end], "big"):
        return f"corrupt PNG ({kind.decode(errors='replace')} chunk fails its CRC)"
      if kind == b"IEND":
        return None
      pos = end
    return "truncated PNG (no IEND chunk)"
  if data.startswith(b"\xff\xd8"):
    pos = 2  # walk the marker segments (an EXIF thumbnail has scans of its own) to the first scan
    while pos + 4 <= len(data):
      if data[pos] != 0xFF:
        return None  # not the expected layout: TF's decoder decides
      marker = data[pos + 1]
      if marker == 0xDA:
        return None if data.rfind(b"\xff\xd9") > pos else "truncated JPEG (no end-of-image marker)"
      pos += 1 if marker == 0xFF else 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return "truncated JPEG (ends before its image data)"
  return None


def min_image_side(data_config: Any) -> int:
  """Smallest usable shorter side: `data.min_side`, or the crop size when < 0
  (unaligned inputs are first resized to 256/224 of it, so half is enough)."""
  if data_config.min_side >= 0:
    return data_config.min_side
  return data_config.image_size if data_config.aligned else data_config.image_size // 2


def pil_to_rgb8(im: Image.Image) -> np.ndarray:
  """PIL image of any mode (grey, RGBA, palette, 16-bit) -> uint8 RGB array."""
  if im.mode.startswith("I"):  # 16/32-bit integer greyscale
    arr = np.asarray(im, np.float64)
    full = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
    im = Image.fromarray(np.clip(np.round(arr * (255.0 / full)), 0, 255).astype(np.uint8))
  return np.asarray(im.convert("RGB"), np.uint8)
