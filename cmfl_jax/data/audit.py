"""Data audit: does the storage give the label away, and do the splits leak?

Face-forgery detectors readily learn how files are stored instead of what they show
("PNG = fake" when the reals were JPEG; "JPEG q75 = real"), and splits leak through
shared subjects and (near-)duplicate images. This module reads per-file header
metadata (no full pixel decode), a content hash and a 64-bit perceptual hash (from a
reduced decode), caches them per file (and the whole result, reused while the splits,
every file's size and mtime and the parameters stay the same), and reports:

  * per split x class (and generator) storage summaries,
  * a shortcut score: cross-validated ROC AUC of a small classifier that sees only
    storage metadata, with a warning and a remedy above a threshold,
  * exact duplicates (sha1), near-duplicates (pHash Hamming distance, sub-quadratic
    multi-index search) and subject overlap, within and across splits,
  * unreadable files with reasons; nothing here stops on a bad file.

Label convention: 1 = bona fide, 0 = attack. The only project module used is
`file_cache` (the per-file cache, shared with the up-front file check).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime
import hashlib
import io
import itertools
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, JpegImagePlugin

from cmfl_jax.data import file_cache

log = logging.getLogger(__name__)

# Bump when a record's fields or the hash definition change: old cache rows are re-read.
CACHE_VERSION = 1
# Bump when what run_audit computes from the records changes: stored results are recomputed.
RESULT_VERSION = 1
CLASS_NAMES = {1: "bona_fide", 0: "attack"}
REMEDY = (
    "Set data.reencode (e.g. --config.data.reencode=jpeg:90) so every training image is "
    "re-encoded the same way (one format and quality) before augmentation, so storage no longer carries the label, and "
    "evaluate with the robustness conditions (re-compression, resizing) to check that "
    "the detector does not depend on storage.")


@dataclasses.dataclass
class AuditSplit:
  """One split to audit. labels: 1 = bona fide, 0 = attack; generators: "real" for bona
  fide; subjects: identity per image (None when unknown; "" = no subject)."""
  name: str
  paths: np.ndarray
  labels: np.ndarray
  generators: np.ndarray
  subjects: np.ndarray | None = None

  def __post_init__(self):
    self.paths = np.asarray(self.paths, dtype=str).ravel()
    self.labels = np.asarray(self.labels).astype(int).ravel()
    self.generators = np.asarray(self.generators, dtype=str).ravel()
    if self.subjects is not None:
      self.subjects = np.asarray(self.subjects, dtype=object).ravel()
    n = self.paths.size
    for field in ("labels", "generators") + (("subjects",) if self.subjects is not None else ()):
      if getattr(self, field).size != n:
        raise ValueError(f"split {self.name!r}: {n} paths but {getattr(self, field).size} {field}")
    if not np.isin(self.labels, (0, 1)).all():
      raise ValueError(f"split {self.name!r}: labels must be 0 (attack) or 1 (bona fide)")


# --------------------------------------------------------------------------------------
# JPEG quality from the quantisation table
# --------------------------------------------------------------------------------------

# ITU-T T.81 Annex K.1 luminance table, natural (row-major) order: libjpeg's base table.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.int64)
# Zigzag position -> natural index (older Pillow versions exposed tables in zigzag order).
_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48,
    41, 34, 27, 20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23,
    30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63])


def ijg_luma_table(quality: int) -> np.ndarray:
  """The luminance table libjpeg (and so PIL) writes for `quality` (jpeg_set_quality
  with force_baseline): standard table scaled by 5000/q below 50, 200 - 2q above."""
  q = min(max(int(quality), 1), 100)
  scale = 5000 // q if q < 50 else 200 - 2 * q
  return np.clip((_STD_LUMA * scale + 50) // 100, 1, 255)


_IJG_TABLES = np.stack([ijg_luma_table(q) for q in range(1, 101)])  # row q-1
_IJG_LOG = np.log(_IJG_TABLES.astype(np.float64))


def estimate_jpeg_quality(luma_table: Sequence[int]) -> tuple[int, bool]:
  """(quality, exact) for a 64-entry luminance quantisation table.

  Inverts the IJG scaling by matching against all 100 scaled standard tables: exact is
  True when one matches entry for entry (libjpeg, PIL, OpenCV, ...). Encoders with own
  tables (cameras, Photoshop) get the nearest quality in log space and exact=False.
  """
  t = np.asarray(luma_table, np.int64).ravel()
  if t.size != 64:
    raise ValueError(f"a quantisation table has 64 entries, got {t.size}")
  best_err, best_q = math.inf, 50
  for order in (None, _ZIGZAG):
    tables = _IJG_TABLES if order is None else _IJG_TABLES[:, order]
    hit = np.flatnonzero((tables == t).all(axis=1))
    if hit.size:
      return int(hit[0]) + 1, True
    logs = _IJG_LOG if order is None else _IJG_LOG[:, order]
    err = np.abs(logs - np.log(np.maximum(t, 1))).sum(axis=1)
    k = int(np.argmin(err))
    if err[k] < best_err:
      best_err, best_q = float(err[k]), k + 1
  return best_q, False


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
      q, exact = estimate_jpeg_quality(qt[luma_id])
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
  return _read_records(uniq, keys, problems, cache_path, workers, time.perf_counter() - t0)


def _read_records(uniq: list[str], keys: Mapping[str, file_cache.Key], problems: Mapping[str, str],
                  cache_path: str | os.PathLike | None, workers: int | None,
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


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------

def _count(values: Iterable[Any]) -> dict[str, int]:
  c = Counter(str(v) for v in values)
  return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _dist(values: Sequence[float]) -> dict[str, float] | None:
  if not len(values):
    return None
  a = np.asarray(values, np.float64)
  return {"min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())}


def _summarise(recs: Sequence[dict]) -> dict[str, Any]:
  ok = [r for r in recs if r.get("ok")]
  out: dict[str, Any] = {"n": len(recs), "unreadable": len(recs) - len(ok)}
  if not ok:
    return out
  jp = [r for r in ok if r["format"] == "JPEG"]
  quality = Counter(r["jpeg_quality"] for r in jp if r["jpeg_quality"] is not None)
  out.update({
      "formats": _count(r["format"] for r in ok),
      "jpeg_quality": {str(q): n for q, n in sorted(quality.items())},
      "jpeg_tables": _count(r["jpeg_table"] for r in jp),
      "subsampling": _count(r["subsampling"] for r in jp),
      "progressive": _count("progressive" if r["progressive"] else "baseline" for r in jp),
      "modes": _count(r["mode"] for r in ok),
      "bit_depth": _count(r["bit_depth"] for r in ok),
      "width": _dist([r["width"] for r in ok]),
      "height": _dist([r["height"] for r in ok]),
      "file_bytes": _dist([r["bytes"] for r in ok]),
      "bytes_per_pixel_median": float(np.median([r["bytes_per_pixel"] for r in ok])),
      "exif_fraction": float(np.mean([r["exif"] for r in ok])),
      "icc_fraction": float(np.mean([r["icc"] for r in ok])),
      "dpi_fraction": float(np.mean([r["dpi"] for r in ok])),
  })
  return out


def _split_summary(split: AuditSplit, recs: list[dict]) -> dict[str, Any]:
  out: dict[str, Any] = {"n": len(recs), "n_bona_fide": int((split.labels == 1).sum()),
                         "n_attack": int((split.labels == 0).sum()),
                         "unreadable": sum(not r.get("ok") for r in recs), "classes": {},
                         "generators": {}}
  for label in (1, 0):
    idx = np.flatnonzero(split.labels == label)
    if idx.size:
      out["classes"][CLASS_NAMES[label]] = _summarise([recs[i] for i in idx])
  for gen in dict.fromkeys(split.generators.tolist()):
    idx = np.flatnonzero(split.generators == gen)
    out["generators"][gen] = _summarise([recs[i] for i in idx])
  return out


# --------------------------------------------------------------------------------------
# Shortcut score
# --------------------------------------------------------------------------------------

# name -> kind; "cat" features are one-hot encoded, "num" ones enter as numbers (NaN
# where undefined, which gradient boosting handles natively).
FEATURES: dict[str, str] = {
    "format": "cat", "jpeg_quality": "num", "jpeg_table": "cat", "subsampling": "cat",
    "progressive": "cat", "mode": "cat", "bit_depth": "cat", "lossless": "cat",
    "exif": "cat", "icc": "cat", "dpi": "cat", "width": "num", "height": "num",
    "aspect": "num", "bytes_per_pixel": "num", "file_kb": "num",
}
_FLAG_NAMES = {"exif": ("EXIF", "no EXIF"), "icc": ("ICC", "no ICC"), "dpi": ("dpi set", "no dpi")}


def _feature_columns(recs: Sequence[dict], features: Mapping[str, str]) -> dict[str, np.ndarray]:
  cols: dict[str, np.ndarray] = {}
  for name, kind in features.items():
    if kind == "cat":
      vals = []
      for r in recs:
        v = r.get(name)
        if name in _FLAG_NAMES:
          v = _FLAG_NAMES[name][0 if v else 1]
        elif name == "progressive":
          v = "n/a (not JPEG)" if v is None else ("progressive" if v else "baseline")
        elif name == "bit_depth":
          v = f"{v}-bit"
        elif v is None:
          v = "n/a (not JPEG)"
        vals.append(str(v))
      cols[name] = np.asarray(vals, dtype=object)
    else:
      if name == "aspect":
        v = [r["width"] / max(r["height"], 1) for r in recs]
      elif name == "file_kb":
        v = [r["bytes"] / 1024 for r in recs]
      else:
        v = [np.nan if r.get(name) is None else r[name] for r in recs]
      cols[name] = np.asarray(v, np.float64)
  return cols


def _codes(col: np.ndarray, kind: str) -> tuple[np.ndarray, list[str] | None]:
  """Integer categories for the univariate check: categorical values, the distinct values
  of a numeric feature with <= 12 of them, else its deciles (NaN its own category)."""
  if kind == "cat":
    labels, codes = np.unique(col.astype(str), return_inverse=True)
    return codes, list(labels)
  finite = col[np.isfinite(col)]
  distinct = np.unique(finite)
  if distinct.size <= 12:
    codes = np.where(np.isfinite(col), np.searchsorted(distinct, np.nan_to_num(col)), distinct.size)
    return codes, None
  edges = np.unique(np.quantile(finite, np.linspace(0, 1, 11)[1:-1]))
  codes = np.where(np.isfinite(col), np.searchsorted(edges, np.nan_to_num(col), side="right"),
                   edges.size + 1)
  return codes, None


def _oof_target_encoding_auc(codes: np.ndarray, y: np.ndarray, folds) -> float:
  """Cross-validated AUC of 'P(bona fide | category)' learned on the training folds."""
  from sklearn.metrics import roc_auc_score
  k = int(codes.max()) + 1
  oof = np.empty(y.size)
  for tr, te in folds:
    prior = y[tr].mean()
    pos = np.bincount(codes[tr], weights=y[tr], minlength=k)
    cnt = np.bincount(codes[tr], minlength=k)
    oof[te] = ((pos + prior) / (cnt + 1))[codes[te]]
  return float(roc_auc_score(y, oof))


def _value_label(name: str, v: Any) -> str:
  if name == "jpeg_quality":
    return "not JPEG" if not np.isfinite(v) else f"q{int(v)}"
  if isinstance(v, float):
    return f"{v:g}px" if name in ("width", "height") else f"{v:.3g}"
  return str(v)


def _class_distribution(name: str, col: np.ndarray) -> str:
  if col.size == 0:
    return "none"
  kind = FEATURES[name]
  if kind == "num" and np.unique(col[np.isfinite(col)]).size > 12:
    f = col[np.isfinite(col)]
    if not f.size:
      return "100% n/a"
    return f"median {np.median(f):.3g} (range {f.min():.3g}-{f.max():.3g})"
  c = Counter(_value_label(name, v) for v in col.tolist())
  top = c.most_common(3)
  s = ", ".join(f"{100 * n / col.size:.0f}% {v}" for v, n in top)
  return s + (f", ... ({len(c) - 3} more)" if len(c) > 3 else "")


def _storage_profile(recs: Sequence[dict]) -> str:
  """E.g. '100% JPEG q75 4:2:0' or '50% PNG, 50% JPEG q90 4:2:0'."""
  def key(r):
    if r["format"] == "JPEG":
      return f"JPEG q{r['jpeg_quality']} {r['subsampling']}"
    return r["format"]
  c = Counter(key(r) for r in recs)
  s = ", ".join(f"{100 * n / len(recs):.0f}% {k}" for k, n in c.most_common(3))
  return s + (f", ... ({len(c) - 3} more)" if len(c) > 3 else "")


def shortcut_score(recs: Sequence[dict], labels: np.ndarray, *, n_folds: int = 5,
                   seed: int = 0, max_samples: int = 20000,
                   features: Sequence[str] | None = None) -> dict[str, Any]:
  """How well storage metadata alone (no pixels) predicts the label.

  Gradient boosting on one-hot + numeric metadata, stratified k-fold ROC AUC (0.5 =
  no shortcut). Also a cross-validated univariate AUC per feature, to name what
  separates the classes, with each class's distribution. Degenerate inputs (a class
  with fewer readable files than folds) give status 'skipped' and a note. features:
  a subset of FEATURES' names (e.g. without the content-dependent bytes_per_pixel).
  """
  unknown = sorted(set(features or ()) - set(FEATURES))
  if unknown:
    raise ValueError(f"unknown shortcut features {unknown}; known: {list(FEATURES)}")
  features = dict(FEATURES) if features is None else {k: FEATURES[k] for k in features}
  from sklearn.ensemble import HistGradientBoostingClassifier
  from sklearn.metrics import roc_auc_score
  from sklearn.model_selection import StratifiedKFold
  import threadpoolctl  # a scikit-learn dependency

  y_all = np.asarray(labels).astype(int)
  keep = np.array([bool(r.get("ok")) for r in recs], bool)
  recs = [r for r, k in zip(recs, keep) if k]
  y = y_all[keep]
  n_bf, n_att = int((y == 1).sum()), int((y == 0).sum())
  out: dict[str, Any] = {"n": int(y.size), "n_bona_fide": n_bf, "n_attack": n_att,
                         "folds": n_folds, "auc": None, "status": "ok", "note": None}
  if min(n_bf, n_att) < max(n_folds, 2):
    out.update(status="skipped", note=(
        f"{n_bf} bona fide / {n_att} attack readable files: needs at least {max(n_folds, 2)} "
        f"of each for {n_folds}-fold cross-validation"))
    return out
  rng = np.random.default_rng(seed)
  if y.size > max_samples:  # a stratified subsample: the AUC estimate needs no more
    take = []
    for label in (0, 1):
      idx = np.flatnonzero(y == label)
      m = max(n_folds, round(max_samples * idx.size / y.size))
      take.append(rng.choice(idx, size=min(m, idx.size), replace=False))
    take = np.sort(np.concatenate(take))
    recs, y = [recs[i] for i in take], y[take]
    out["note"] = f"subsampled to {y.size} files (stratified)"
  cols = _feature_columns(recs, features)
  folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(np.zeros(y.size), y))

  # Design matrix; constant columns carry nothing and are dropped.
  blocks, constant = [], []
  for name, kind in features.items():
    col = cols[name]
    if kind == "cat":
      cats, inv = np.unique(col.astype(str), return_inverse=True)
      if cats.size < 2:
        constant.append(name)
        continue
      blocks.append(np.eye(cats.size, dtype=np.float64)[inv])
    else:
      finite = col[np.isfinite(col)]
      if np.unique(finite).size + (finite.size < col.size) < 2:
        constant.append(name)
        continue
      blocks.append(col[:, None])
  out["constant_features"] = constant
  if not blocks:
    out.update(auc=0.5, auc_folds=[],
               note="every metadata feature is constant: no shortcut possible")
    out["features"] = []
    return out
  x = np.concatenate(blocks, axis=1)
  fold_auc, oof = [], np.empty(y.size)
  # One OpenMP thread: on <= max_samples rows it is fast, and on a shared machine
  # OpenMP's spinning barriers make more threads many times slower.
  with threadpoolctl.threadpool_limits(1):
    for tr, te in folds:
      clf = HistGradientBoostingClassifier(
          max_iter=100, learning_rate=0.1, max_leaf_nodes=15, early_stopping=False,
          min_samples_leaf=min(20, max(2, tr.size // 20)), random_state=seed)
      clf.fit(x[tr], y[tr])
      p = clf.predict_proba(x[te])[:, 1]
      oof[te] = p
      fold_auc.append(float(roc_auc_score(y[te], p)))
  out.update(auc=float(np.mean(fold_auc)), auc_std=float(np.std(fold_auc)), auc_folds=fold_auc,
             auc_pooled=float(roc_auc_score(y, oof)), model="HistGradientBoostingClassifier")

  feats = []
  for name, kind in features.items():
    if name in constant:
      continue
    codes, _ = _codes(cols[name], kind)
    feats.append({
        "feature": name, "auc": _oof_target_encoding_auc(codes, y, folds),
        "bona_fide": _class_distribution(name, cols[name][y == 1]),
        "attack": _class_distribution(name, cols[name][y == 0])})
  feats.sort(key=lambda f: -f["auc"])
  out["features"] = feats
  out["storage"] = {"bona_fide": _storage_profile([r for r, l in zip(recs, y) if l == 1]),
                    "attack": _storage_profile([r for r, l in zip(recs, y) if l == 0])}
  return out


def _shortcut_warning(split: str, what: str, score: dict, threshold: float) -> dict[str, Any]:
  feats = [f for f in score["features"] if f["auc"] >= 0.6][:4] or score["features"][:2]
  named = "; ".join(f"{f['feature']} (AUC {f['auc']:.2f}: bona fide {f['bona_fide']}; "
                    f"attack {f['attack']})" for f in feats)
  st = score.get("storage", {})
  msg = (f"Shortcut risk in split '{split}' ({what}): storage metadata alone predicts the "
         f"label with cross-validated ROC AUC {score['auc']:.3f} (threshold {threshold:g}). "
         f"Most separating: {named or 'an interaction of features'}. Storage: bona fide: "
         f"{st.get('bona_fide')}; attack: {st.get('attack')}.")
  return {"split": split, "comparison": what, "auc": score["auc"], "threshold": threshold,
          "features": [f["feature"] for f in feats], "feature_details": feats,
          "storage": st, "message": msg, "remedy": REMEDY}


# --------------------------------------------------------------------------------------
# Near-duplicate search
# --------------------------------------------------------------------------------------

_POP8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)
_MAX_TABLE_BITS = 22  # bucket tables of 2^22 entries (int64: 32 MiB each) at most


def _popcount(x: np.ndarray) -> np.ndarray:
  x = np.ascontiguousarray(x, np.uint64)
  if hasattr(np, "bitwise_count"):
    return np.bitwise_count(x).astype(np.int64)
  return _POP8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1).astype(np.int64)


def _band_widths(m: int) -> list[int]:
  return [64 // m + (1 if i < 64 % m else 0) for i in range(m)]


def _plan(n: int, t: int) -> tuple[int, int, float]:
  """(bands, radius, estimated seconds) of the cheapest multi-index search; bands=0 is
  brute force. Constants are rough per-element numpy costs."""
  best = (0, t, n * n / 2 * 3e-9)
  for m in range(3, 65):
    widths, r = _band_widths(m), t // m
    probes = [sum(math.comb(w, i) for i in range(r + 1)) for w in widths]
    cost = sum(n * p * 50e-9 + (1 << w) * 4e-9 + n * n * p / (1 << w) * 40e-9
               for p, w in zip(probes, widths))
    if cost < best[2]:
      best = (m, r, cost)
  return best


def hamming_pairs(hashes: np.ndarray, threshold: int, bands: int | None = None,
                  chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """All pairs i < j with popcount(h_i ^ h_j) <= threshold, without comparing all pairs.

  Multi-index hashing: cut the 64 bits into m bands; if two hashes differ in <= t bits,
  some band differs in <= t // m bits (pigeonhole). m = t + 1 is the plain 'some band
  equal' scheme; each band's items are bucketed by value and only items in buckets
  within that radius are compared, then verified. m is chosen by a cost model (or
  forced with `bands`; 0 = brute force). Returns (pairs (k, 2), distances (k,), info).
  """
  h = np.ascontiguousarray(hashes, np.uint64).ravel()
  n, t = h.size, int(threshold)
  if bands is None:
    m, r, est = _plan(n, t)
  else:
    m, r, est = bands, (t // bands if bands else t), float("nan")
    if m and (m < 3 or m > 64):
      raise ValueError("bands must be 0 (brute force) or 3..64")
  info: dict[str, Any] = {"n": n, "method": "brute force" if m == 0 else "multi-index",
                          "bands": m, "radius": r, "candidates": 0}
  found_i, found_j = [], []
  if n < 2:
    pass
  elif m == 0:
    step = max(1, chunk // n)
    for a in range(0, n, step):
      d = _popcount(h[a:a + step, None] ^ h[None, :])
      ii, jj = np.nonzero(d <= t)
      ii += a
      keep = jj > ii
      found_i.append(ii[keep])
      found_j.append(jj[keep])
      info["candidates"] += int(d.size)
  else:
    shift = 64
    for w in _band_widths(m):
      shift -= w
      v = ((h >> np.uint64(shift)) & np.uint64((1 << w) - 1)).astype(np.int64)
      order = np.argsort(v, kind="stable")
      counts = np.bincount(v, minlength=1 << w)
      starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
      for bits in itertools.chain.from_iterable(
          itertools.combinations(range(w), k) for k in range(r + 1)):
        q = v ^ sum(1 << b for b in bits)
        c = counts[q]
        nz = np.flatnonzero(c)
        if not nz.size:
          continue
        cum = np.cumsum(c[nz])
        lo = 0
        while lo < nz.size:  # bounded memory: at most ~chunk candidates at a time
          hi = int(np.searchsorted(cum, (cum[lo - 1] if lo else 0) + chunk, side="right"))
          hi = max(hi, lo + 1)
          sel = nz[lo:hi]
          cs = c[sel]
          ii = np.repeat(sel, cs)
          base = np.repeat(starts[q[sel]] - (np.cumsum(cs) - cs), cs)
          jj = order[base + np.arange(ii.size)]
          keep = ii < jj
          ii, jj = ii[keep], jj[keep]
          info["candidates"] += int(ii.size)
          ok = _popcount(h[ii] ^ h[jj]) <= t
          found_i.append(ii[ok])
          found_j.append(jj[ok])
          lo = hi
  if found_i:
    key = np.unique(np.concatenate(found_i).astype(np.int64) * n + np.concatenate(found_j))
    pairs = np.stack([key // n, key % n], axis=1)
  else:
    pairs = np.zeros((0, 2), np.int64)
  dist = _popcount(h[pairs[:, 0]] ^ h[pairs[:, 1]]) if pairs.size else np.zeros(0, np.int64)
  info["pairs"] = int(pairs.shape[0])
  info["estimated_seconds"] = est
  return pairs, dist, info


# --------------------------------------------------------------------------------------
# Leakage
# --------------------------------------------------------------------------------------

class _Entries:
  """Every (split, index) with its absolute path, label, generator, record."""

  def __init__(self, splits: Mapping[str, AuditSplit], abs_paths: Mapping[str, list[str]],
               records: Mapping[str, dict]):
    self.names = list(splits)
    self.split, self.path, self.label, self.gen = [], [], [], []
    for s_i, (name, sp) in enumerate(splits.items()):
      self.split += [s_i] * sp.paths.size
      self.path += abs_paths[name]
      self.label += sp.labels.tolist()
      self.gen += sp.generators.tolist()
    self.split = np.asarray(self.split, np.int64)
    self.label = np.asarray(self.label, np.int64)
    self.records = records

  def pair_key(self, a: int, b: int) -> str:
    a, b = sorted((a, b))
    return f"{self.names[a]}~{self.names[b]}"

  def describe(self, e: int) -> dict[str, Any]:
    return {"split": self.names[self.split[e]], "path": self.path[e],
            "label": CLASS_NAMES[int(self.label[e])], "generator": self.gen[e]}


def _pair_counts(groups: Sequence[tuple[Counter, Counter]], entries: _Entries) -> dict[str, int]:
  """Entry pairs per split pair for group pairs (a, b) of split counters; (c, None) means
  all pairs within c."""
  out: Counter = Counter()
  for ca, cb in groups:
    if cb is None:
      for s, n in ca.items():
        out[entries.pair_key(s, s)] += n * (n - 1) // 2
      for s, u in itertools.combinations(sorted(ca), 2):
        out[entries.pair_key(s, u)] += ca[s] * ca[u]
    else:
      for s, n in ca.items():
        for u, k in cb.items():
          out[entries.pair_key(s, u)] += n * k
  return dict(sorted((k, v) for k, v in out.items() if v))


def _exact_duplicates(entries: _Entries,
                      max_listed: int) -> tuple[dict[str, Any], dict[str, list[int]]]:
  by_sha: dict[str, list[int]] = defaultdict(list)
  for e, p in enumerate(entries.path):
    sha = entries.records[p].get("sha1")
    if sha:
      by_sha[sha].append(e)
  groups = {s: es for s, es in by_sha.items() if len(es) > 1}
  counters = [(Counter(entries.split[es].tolist()), None) for es in groups.values()]
  conflicts = [s for s, es in groups.items() if len(set(entries.label[es].tolist())) > 1]
  cross = [s for s, es in groups.items() if len(set(entries.split[es].tolist())) > 1]
  listed = sorted(groups, key=lambda s: (s not in cross, s not in conflicts, s))[:max_listed]
  result = {
      "groups": len(groups), "entries_in_groups": sum(len(es) for es in groups.values()),
      "cross_split_groups": len(cross), "label_conflict_groups": len(conflicts),
      "pairs_by_split_pair": _pair_counts(counters, entries),
      "listed": [{"sha1": s, "same_path": len({entries.path[e] for e in groups[s]}) == 1,
                  "entries": [entries.describe(e) for e in groups[s][:20]]} for s in listed],
  }
  return result, by_sha


def _near_duplicates(entries: _Entries, by_sha: Mapping[str, list[int]], hamming: int,
                     max_listed: int) -> dict[str, Any]:
  reps, hashes = [], []
  for sha, es in by_sha.items():
    rec = entries.records[entries.path[es[0]]]
    if rec.get("ok") and rec.get("phash"):
      reps.append(es)
      hashes.append(int(rec["phash"], 16))
  t0 = time.perf_counter()
  pairs, dist, info = hamming_pairs(np.asarray(hashes, np.uint64), hamming)
  info["seconds"] = time.perf_counter() - t0
  counters, rows, conflicts = [], [], 0
  for (a, b), d in zip(pairs.tolist(), dist.tolist()):
    ea, eb = reps[a], reps[b]
    counters.append((Counter(entries.split[ea].tolist()), Counter(entries.split[eb].tolist())))
    if len(set(entries.label[ea + eb].tolist())) > 1:
      conflicts += 1
    if len(rows) < 4 * max_listed:
      for x, y in itertools.product(ea[:5], eb[:5]):
        rows.append((entries.split[x] == entries.split[y], d, x, y))
  rows.sort(key=lambda r: (r[0], r[1]))  # cross-split first, closest first
  by_pair = _pair_counts(counters, entries)
  return {
      "hamming_threshold": hamming, "content_pairs": int(pairs.shape[0]),
      "pairs_total": int(sum(by_pair.values())), "pairs_by_split_pair": by_pair,
      "label_conflict_pairs": conflicts,
      "listed": [{"hamming": int(d), "a": entries.describe(x), "b": entries.describe(y)}
                 for _, d, x, y in rows[:max_listed]],
      "search": info,
      "note": "exact duplicates are reported separately and not repeated here",
  }


_NO_SUBJECT = {"", "none", "nan", "null"}


def _subject_overlap(splits: Mapping[str, AuditSplit], max_listed: int) -> dict[str, Any]:
  sets = {}
  for name, sp in splits.items():
    if sp.subjects is not None:
      subj = [str(s) for s in sp.subjects.tolist()]
      sets[name] = (subj, {s for s in subj if s.strip().lower() not in _NO_SUBJECT})
  out: dict[str, Any] = {"splits_with_subjects": list(sets), "pairs": {}}
  for a, b in itertools.combinations(sets, 2):
    shared = sets[a][1] & sets[b][1]
    out["pairs"][f"{a}~{b}"] = {
        "subjects": [len(sets[a][1]), len(sets[b][1])], "shared": len(shared),
        "images_affected": [sum(s in shared for s in sets[a][0]),
                            sum(s in shared for s in sets[b][0])],
        "examples": sorted(shared)[:max_listed]}
  return out


# --------------------------------------------------------------------------------------
# The audit
# --------------------------------------------------------------------------------------

def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  return x


def run_audit(splits: Mapping[str, AuditSplit] | Iterable[AuditSplit],
              cache_path: str | os.PathLike | None = None, *,
              train_splits: Sequence[str] | None = None, shortcut_threshold: float = 0.75,
              hamming: int = 8, workers: int | None = None, n_folds: int = 5, seed: int = 0,
              max_listed: int = 200, shortcut_max_samples: int = 20000,
              shortcut_features: Sequence[str] | None = None) -> dict[str, Any]:
  """Audit splits for storage shortcuts and leakage; returns a JSON-serialisable dict.

  cache_path: the per-file metadata cache (None: default_cache_path(); ':memory:' for
  none). train_splits: splits to score for shortcuts (None: those whose name contains
  'train', else all). A warning is raised where the cross-validated AUC of the
  metadata-only classifier exceeds shortcut_threshold. hamming: near-duplicate
  threshold in bits of the 64-bit pHash. shortcut_features: subset of FEATURES for
  the classifier (default all). max_listed caps the listed pairs, not the counts.
  """
  t_start = time.perf_counter()
  if not isinstance(splits, Mapping):
    splits = {s.name: s for s in splits}
  splits = dict(splits)
  if train_splits is None:
    train_splits = [s for s in splits if "train" in s.lower()] or list(splits)
  unknown = [s for s in train_splits if s not in splits]
  if unknown:
    raise ValueError(f"train_splits {unknown} not among splits {list(splits)}")
  timings: dict[str, float] = {}
  abs_paths = {name: [os.path.abspath(p) for p in sp.paths.tolist()] for name, sp in splits.items()}
  uniq = list(dict.fromkeys(itertools.chain.from_iterable(abs_paths.values())))
  _, keys, problems = file_cache.stat_keys(uniq)
  stat_s = time.perf_counter() - t_start
  params = {"train_splits": list(train_splits), "shortcut_threshold": shortcut_threshold,
            "hamming": hamming, "n_folds": n_folds, "seed": seed, "max_listed": max_listed,
            "shortcut_max_samples": shortcut_max_samples,
            "shortcut_features": list(shortcut_features or FEATURES)}
  digest = _input_digest(splits, keys, problems, params)
  with file_cache.FileCache(cache_path, "results", RESULT_VERSION) as results:
    reused = results.get_many({digest: (len(uniq), 0)}).get(digest)
  if reused is not None:
    return _reuse(reused, len(keys), stat_s, time.perf_counter() - t_start)
  records, read_stats = _read_records(uniq, keys, problems, cache_path, workers, stat_s)
  timings.update(read_stats.pop("seconds"))
  log.info("audit: %d files, %d from cache, %d read, %d unreadable", read_stats["unique_files"],
           read_stats["from_cache"], read_stats["read"], read_stats["unreadable"])

  t0 = time.perf_counter()
  split_recs = {name: [records[p] for p in abs_paths[name]] for name in splits}
  summaries = {name: _split_summary(sp, split_recs[name]) for name, sp in splits.items()}
  timings["summaries"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  scores, warnings_ = [], []
  for name in train_splits:
    sp, recs = splits[name], split_recs[name]
    score = shortcut_score(recs, sp.labels, n_folds=n_folds, seed=seed,
                           max_samples=shortcut_max_samples, features=shortcut_features)
    score.update(split=name, comparison="bona fide vs attack")
    scores.append(score)
    class_warned = score["status"] == "ok" and score["auc"] > shortcut_threshold
    if class_warned:
      warnings_.append(_shortcut_warning(name, "bona fide vs attack", score, shortcut_threshold))
    gens = [g for g in dict.fromkeys(sp.generators[sp.labels == 0].tolist())]
    if len(gens) > 1:  # one generator stored differently hides inside the attack class
      for g in gens:
        idx = np.flatnonzero((sp.labels == 1) | ((sp.labels == 0) & (sp.generators == g)))
        gs = shortcut_score([recs[i] for i in idx], sp.labels[idx], n_folds=n_folds, seed=seed,
                            max_samples=shortcut_max_samples, features=shortcut_features)
        gs.update(split=name, comparison=f"bona fide vs {g}")
        scores.append(gs)
        if not class_warned and gs["status"] == "ok" and gs["auc"] > shortcut_threshold:
          warnings_.append(_shortcut_warning(name, f"bona fide vs {g}", gs, shortcut_threshold))
  timings["shortcut"] = time.perf_counter() - t0

  entries = _Entries(splits, abs_paths, records)
  t0 = time.perf_counter()
  exact, by_sha = _exact_duplicates(entries, max_listed)
  timings["exact_duplicates"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  near = _near_duplicates(entries, by_sha, hamming, max_listed)
  timings["near_duplicates"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  subjects = _subject_overlap(splits, max_listed)
  timings["subject_overlap"] = time.perf_counter() - t0

  where: dict[str, list[str]] = defaultdict(list)
  for name in splits:
    for p in dict.fromkeys(abs_paths[name]):
      where[p].append(name)
  unreadable = [{"path": p, "splits": where[p], "reason": r.get("reason")}
                for p, r in records.items() if not r.get("ok")]

  findings = [{"kind": "shortcut", "message": w["message"]} for w in warnings_]
  for kind, res in (("exact_duplicates", exact), ("near_duplicates", near)):
    cross = {k: v for k, v in res["pairs_by_split_pair"].items()
             if v and k.split("~")[0] != k.split("~")[1]}
    if cross:
      findings.append({"kind": kind, "message": f"{kind.replace('_', ' ')} across splits: " +
                       ", ".join(f"{k} {v} pairs" for k, v in cross.items())})
  shared = {k: v["shared"] for k, v in subjects["pairs"].items() if v["shared"]}
  if shared:
    findings.append({"kind": "subject_overlap", "message": "subjects shared across splits: " +
                     ", ".join(f"{k} {v}" for k, v in shared.items())})
  if unreadable:
    findings.append({"kind": "unreadable", "message": f"{len(unreadable)} unreadable files"})
  timings["total"] = time.perf_counter() - t_start

  result = {
      "audit_version": CACHE_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "config": {"splits": list(splits), "train_splits": list(train_splits),
                 "shortcut_threshold": shortcut_threshold, "hamming": hamming,
                 "n_folds": n_folds, "seed": seed, "cache_path": read_stats["cache_path"],
                 "shortcut_features": list(shortcut_features or FEATURES),
                 "workers": read_stats["workers"]},
      "files": {"entries": len(entries.path), **{k: v for k, v in read_stats.items()
                                                 if k not in ("cache_path", "workers")}},
      "splits": summaries,
      "shortcut": {"threshold": shortcut_threshold, "scores": scores, "warnings": warnings_},
      "exact_duplicates": exact, "near_duplicates": near, "subject_overlap": subjects,
      "unreadable": unreadable, "findings": findings, "timings": timings, "reused_from": None,
  }
  result = _jsonable(result)
  with file_cache.FileCache(cache_path, "results", RESULT_VERSION) as results:
    results.put_many([(digest, len(uniq), 0, result)])
  return result


def _input_digest(splits: Mapping[str, AuditSplit], keys: Mapping[str, file_cache.Key],
                  problems: Mapping[str, str], params: Mapping[str, Any]) -> str:
  """Everything an audit's result depends on: the splits as given, each file's (size,
  mtime_ns) or problem, the parameters and the versions of the code."""
  try:
    from importlib.metadata import version
    sklearn_version = version("scikit-learn")
  except Exception:  # noqa: BLE001 - unknown version: still a stable key
    sklearn_version = None
  h = hashlib.sha256(json.dumps([CACHE_VERSION, RESULT_VERSION, sklearn_version, params],
                                sort_keys=True).encode())
  for name, sp in splits.items():
    subjects = None if sp.subjects is None else [str(x) for x in sp.subjects.tolist()]
    h.update(json.dumps([name, sp.paths.tolist(), sp.labels.tolist(), sp.generators.tolist(),
                         subjects]).encode())
  h.update(json.dumps([list(keys.items()), list(problems.items())]).encode())
  return f"audit:{h.hexdigest()}"


def _reuse(result: dict[str, Any], n_cached: int, stat_s: float, total_s: float) -> dict[str, Any]:
  """A stored result for identical inputs: no file is opened, nothing recomputed."""
  log.info("audit: %d files unchanged since the audit of %s: its result reused",
           result["files"]["unique_files"], result["created"])
  result["reused_from"] = result["created"]
  result["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  result["files"].update(from_cache=n_cached, read=0)
  result["timings"] = {"stat": stat_s, "result_lookup": total_s - stat_s, "total": total_s}
  return result


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------

def _top(counts: Mapping[str, int] | None, k: int = 3, prefix: str = "") -> str:
  if not counts:
    return "-"
  total = sum(counts.values())
  items = sorted(counts.items(), key=lambda kv: -kv[1])[:k]
  s = ", ".join(f"{prefix}{v} {100 * n / total:.0f}%" for v, n in items)
  return s + (", ..." if len(counts) > k else "")


def _size(s: Mapping[str, Any]) -> str:
  w, h = s.get("width"), s.get("height")
  if not w:
    return "-"
  return (f"{w['median']:g}x{h['median']:g} ({w['min']:g}x{h['min']:g}-"
          f"{w['max']:g}x{h['max']:g})")


def summary_lines(result: Mapping[str, Any]) -> list[str]:
  """A few lines for a training log: files, per-split storage, findings."""
  f, t = result["files"], result["timings"]
  lines = [f"data audit: {len(result['splits'])} splits, {f['entries']} entries, "
           f"{f['unique_files']} files ({f['read']} read, {f['from_cache']} cached, "
           f"{f['unreadable']} unreadable) in {t['total']:.1f}s"]
  for name, s in result["splits"].items():
    parts = []
    for cls, c in s["classes"].items():
      q = f"; JPEG {_top(c.get('jpeg_quality'), 2, 'q')}" if c.get("jpeg_quality") else ""
      parts.append(f"{cls.replace('_', ' ')} {c['n']} [{_top(c.get('formats'), 2)}{q}]")
    lines.append(f"  {name}: " + "; ".join(parts))
  for sc in result["shortcut"]["scores"]:
    if sc["status"] != "ok":
      lines.append(f"  shortcut {sc['split']} ({sc['comparison']}): skipped - {sc['note']}")
    else:
      flag = "WARNING" if sc["auc"] > result["shortcut"]["threshold"] else "ok"
      lines.append(f"  shortcut {sc['split']} ({sc['comparison']}): metadata-only AUC "
                   f"{sc['auc']:.3f} [{flag}]")
  for w in result["shortcut"]["warnings"]:
    lines.append(f"  WARNING {w['message']} Remedy: {w['remedy']}")
  ex, nd = result["exact_duplicates"], result["near_duplicates"]
  lines.append(f"  exact duplicates: {ex['groups']} groups; pairs by split pair "
               f"{ex['pairs_by_split_pair'] or '{}'}")
  lines.append(f"  near duplicates (<= {nd['hamming_threshold']} bits): pairs by split pair "
               f"{nd['pairs_by_split_pair'] or '{}'}")
  for k, v in result["subject_overlap"]["pairs"].items():
    lines.append(f"  subjects {k}: {v['shared']} shared")
  for u in result["unreadable"][:5]:
    lines.append(f"  unreadable: {u['path']}: {u['reason']}")
  if len(result["unreadable"]) > 5:
    lines.append(f"  ... {len(result['unreadable']) - 5} more unreadable")
  return lines


def _md_escape(s: Any) -> str:
  return str(s).replace("|", "\\|").replace("\n", " ")


def _markdown(result: Mapping[str, Any]) -> str:
  out = ["# Data audit", "", f"Created {result['created']}.", ""]
  f = result["files"]
  out += [f"{f['entries']} entries, {f['unique_files']} files: {f['read']} read, "
          f"{f['from_cache']} from cache, {f['unreadable']} unreadable.", ""]
  out += ["## Findings", ""]
  out += [f"- **{x['kind']}**: {_md_escape(x['message'])}"
          for x in result["findings"]] or ["- none"]
  if result["shortcut"]["warnings"]:
    out += ["", f"**Remedy for shortcuts:** {REMEDY}"]
  out += ["", "## Storage per split", ""]
  cols = ["group", "n", "unreadable", "formats", "JPEG quality", "subsampling", "progressive",
          "modes", "size (median, range)", "bytes/px", "EXIF", "ICC"]
  for name, s in result["splits"].items():
    out += [f"### {name}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    groups = [(k.replace("_", " "), v) for k, v in s["classes"].items()]
    groups += [(f"generator {k}", v) for k, v in s["generators"].items()]
    for label, c in groups:
      row = [label, c["n"], c["unreadable"], _top(c.get("formats")),
             _top(c.get("jpeg_quality"), 3, "q"), _top(c.get("subsampling")),
             _top(c.get("progressive")), _top(c.get("modes")), _size(c),
             f"{c['bytes_per_pixel_median']:.3g}" if "bytes_per_pixel_median" in c else "-",
             f"{100 * c['exif_fraction']:.0f}%" if "exif_fraction" in c else "-",
             f"{100 * c['icc_fraction']:.0f}%" if "icc_fraction" in c else "-"]
      out.append("| " + " | ".join(_md_escape(v) for v in row) + " |")
    out.append("")
  out += ["## Shortcut scores (metadata only, cross-validated ROC AUC)", "",
          f"Warning above {result['shortcut']['threshold']:g}.", "",
          "| split | comparison | n | AUC | top features | note |", "|---|---|---|---|---|---|"]
  for sc in result["shortcut"]["scores"]:
    auc = "-" if sc["auc"] is None else f"{sc['auc']:.3f}"
    top = ", ".join(f"{x['feature']} {x['auc']:.2f}" for x in sc.get("features", [])[:3])
    out.append(f"| {sc['split']} | {sc['comparison']} | {sc['n']} | {auc} | {top or '-'} | "
               f"{_md_escape(sc.get('note') or '')} |")
  for w in result["shortcut"]["warnings"]:
    out += ["", f"**{_md_escape(w['message'])}**", "", "| feature | AUC | bona fide | attack |",
            "|---|---|---|---|"]
    out += [f"| {x['feature']} | {x['auc']:.2f} | {_md_escape(x['bona_fide'])} | "
            f"{_md_escape(x['attack'])} |" for x in w["feature_details"]]
  ex, nd = result["exact_duplicates"], result["near_duplicates"]
  out += ["", "## Exact duplicates (sha1)", "",
          f"{ex['groups']} groups, {ex['cross_split_groups']} across splits, "
          f"{ex['label_conflict_groups']} with conflicting labels. Pairs by split pair: "
          f"{ex['pairs_by_split_pair'] or 'none'}.", ""]
  for g in ex["listed"][:50]:
    out.append(f"- `{g['sha1'][:12]}`: " + "; ".join(
        f"{e['split']} {e['label']} `{_md_escape(e['path'])}`" for e in g["entries"][:6]))
  out += ["", f"## Near duplicates (pHash, <= {nd['hamming_threshold']} of 64 bits)", "",
          f"{nd['content_pairs']} content pairs ({nd['search']['method']}, "
          f"{nd['search']['candidates']} candidates checked). Pairs by split pair: "
          f"{nd['pairs_by_split_pair'] or 'none'}.", ""]
  for p in nd["listed"][:50]:
    out.append(f"- {p['hamming']} bits: {p['a']['split']} `{_md_escape(p['a']['path'])}` ~ "
               f"{p['b']['split']} `{_md_escape(p['b']['path'])}`")
  out += ["", "## Subject overlap", ""]
  if not result["subject_overlap"]["pairs"]:
    out.append("No pair of splits has subject ids.")
  for k, v in result["subject_overlap"]["pairs"].items():
    out.append(f"- {k}: {v['shared']} shared subjects (images affected {v['images_affected']})"
               + (f", e.g. {', '.join(map(str, v['examples'][:10]))}" if v["examples"] else ""))
  out += ["", "## Unreadable files", ""]
  out += [f"- `{_md_escape(u['path'])}` ({', '.join(u['splits'])}): {_md_escape(u['reason'])}"
          for u in result["unreadable"][:500]] or ["none"]
  if len(result["unreadable"]) > 500:
    out.append(f"- ... {len(result['unreadable']) - 500} more in audit.json")
  out += ["", "## Timings (s)", "",
          ", ".join(f"{k} {v:.2f}" for k, v in result["timings"].items()), ""]
  return "\n".join(out)


def write_audit(result: Mapping[str, Any], out_dir: str) -> tuple[str, str]:
  """Writes audit.json (everything) and audit.md (for people) through
  tf.io.gfile (workdirs may be gs://); returns their paths."""
  import tensorflow as tf  # only here: the audit itself needs no TF
  tf.io.gfile.makedirs(out_dir)
  texts = {"audit.json": json.dumps(result, indent=1, allow_nan=False) + "\n",
           "audit.md": _markdown(result)}
  for name, text in texts.items():
    with tf.io.gfile.GFile(f"{out_dir}/{name}", "w") as f:
      f.write(text)
  return f"{out_dir}/audit.json", f"{out_dir}/audit.md"
