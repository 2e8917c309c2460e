"""Reading what the user gives: protocol CSVs, image folders, image headers.
No TensorFlow (PIL reads headers and, for checks, pixels)."""

from __future__ import annotations

import csv
import os
from typing import Any, Iterable

import numpy as np
from PIL import Image

from cmfl_jax.data.split import DataError, Files, Split

PROTOCOL_HEADER = ("subject", "filename", "attack_type")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
#: Formats tf.io.decode_image reads (as named by PIL).
DECODABLE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "MPO")
REAL_FOLDER = "real"


def resolve_under_root(root: str, relative: str, where: str) -> str:
  """Joins a protocol filename to the data root, refusing paths that escape it."""
  if not relative:
    raise DataError(f"{where}: empty filename")
  if os.path.isabs(relative):
    raise DataError(f"{where}: absolute path {relative!r} not allowed; filenames are relative "
                    "to the data root")
  root_real = os.path.realpath(root)
  full = os.path.realpath(os.path.join(root_real, relative))
  if os.path.commonpath([root_real, full]) != root_real:
    raise DataError(f"{where}: filename {relative!r} escapes the data root {root!r}")
  return full


def read_protocol_csv(csv_path: str, data_root: str, name: str | None = None) -> Split:
  """Reads an official-format protocol CSV: header `subject,filename,attack_type`;
  empty attack_type = bona fide, anything else = attack (its value = generator)."""
  if not os.path.isfile(csv_path):
    raise DataError(f"protocol file not found: {csv_path}")
  paths, labels, gens, subjects = [], [], [], []
  with open(csv_path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header[:3]) != PROTOCOL_HEADER:
      raise DataError(f"{csv_path}:1: header must be {','.join(PROTOCOL_HEADER)}, got {header}")
    for lineno, row in enumerate(reader, start=2):
      if not row or all(not c.strip() for c in row):
        continue
      if len(row) < 3:
        raise DataError(f"{csv_path}:{lineno}: expected 3 columns "
                        f"({','.join(PROTOCOL_HEADER)}), got {len(row)}: {row}")
      attack = row[2].strip()
      paths.append(resolve_under_root(data_root, row[1].strip(), f"{csv_path}:{lineno}"))
      labels.append(0 if attack else 1)
      gens.append(attack or "real")
      subjects.append(row[0].strip())
  if not paths:
    raise DataError(f"{csv_path}: no examples")
  return Split(name or os.path.splitext(os.path.basename(csv_path))[0],
               np.asarray(labels, np.int32), np.asarray(gens), Files(np.asarray(paths)),
               subjects=np.asarray(subjects))


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
  return Split(split, np.asarray(labels, np.int32), np.asarray(gens), Files(np.asarray(paths)))


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


def check_image_file(path: str, min_side: int, max_pixels: int, full_decode: bool) -> str | None:
  """Why `path` cannot be used, or None. Never raises.

  Reads the header (format, size) and, with `full_decode`, every pixel, which
  is the only way to find truncated files before they break an epoch.
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
      if w * h > max_pixels:
        return f"too large ({w}x{h} > {max_pixels} pixels; decompression bomb?)"
      if min(w, h) < min_side:
        return f"too small ({w}x{h}; min side {min_side})"
      if full_decode:
        im.load()
  except Exception as e:  # noqa: BLE001 - any decoder failure means "unusable"
    return f"not a readable image ({type(e).__name__}: {e})"
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
