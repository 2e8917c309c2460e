"""How the data audit's cost grows with the number of files: cold (every file read),
warm (everything from the cache) and the near-duplicate search. Prints one JSON object.

  python benchmarks/audit_scale.py 10000
  python benchmarks/audit_scale.py 100000 --workers 4

Files are tiny (32x32), half PNG, half JPEG (q75/85/95), each with its own content, so
the timings are per-file overheads (open, header, sha1, reduced decode, pHash, cache),
not decode throughput of real-sized faces. Some exact and near-duplicates are planted
across train/eval to check that the search finds them at scale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

def _load_audit():
  from cmfl_jax.data import auditing as audit
  return audit


def _picture(rng: np.random.Generator, size: int = 32) -> Image.Image:
  grid = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
  a = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), np.int16)
  a = a + rng.integers(-6, 7, a.shape, dtype=np.int16)
  return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def write_files(root: Path, n: int, seed: int = 0, planted: int = 10):
  """n files in root/<k>/; returns (train, eval, near) with train and eval as (paths,
  labels, generators, subjects) and `planted` exact and `planted` near duplicates of
  train images in eval; near lists the planted near-duplicate path pairs."""
  rng = np.random.default_rng(seed)
  qualities = (75, 85, 95)
  rows = []
  for i in range(n - 2 * planted):
    d = root / f"{i // 1000:04d}"
    if i % 1000 == 0:
      d.mkdir(parents=True, exist_ok=True)
    im = _picture(rng)
    if i % 2:
      p = d / f"{i}.jpg"
      im.save(p, "JPEG", quality=qualities[i % 3])
    else:
      p = d / f"{i}.png"
      im.save(p, "PNG")
    rows.append((str(p), int(rng.integers(0, 2)), f"s{int(rng.integers(0, max(n // 10, 1)))}"))
  n_train = int(0.8 * len(rows))
  train, evals = rows[:n_train], rows[n_train:]
  dup_dir = root / "planted"
  dup_dir.mkdir()
  near_pairs = []
  for k in range(planted):
    src, label, subj = train[k]
    exact = dup_dir / f"exact{k}{Path(src).suffix}"
    shutil.copy(src, exact)
    near = dup_dir / f"near{k}.jpg"
    Image.open(train[planted + k][0]).resize((24, 24), Image.Resampling.BILINEAR).save(
        near, "JPEG", quality=80)
    evals += [(str(exact), label, subj), (str(near), train[planted + k][1], train[planted + k][2])]
    near_pairs.append({os.path.abspath(train[planted + k][0]), os.path.abspath(near)})

  def cols(rs):
    labels = np.array([r[1] for r in rs])
    return (np.array([r[0] for r in rs]), labels, np.where(labels == 1, "real", "gan"),
            np.array([r[2] for r in rs]))
  return cols(train), cols(evals), near_pairs


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("n", type=int, nargs="?", default=100000, help="number of files")
  ap.add_argument("--workers", type=int, default=None, help="reader threads (audit default)")
  ap.add_argument("--hamming", type=int, default=8)
  ap.add_argument("--dir", default=None, help="where to write (default: a temp dir, removed)")
  args = ap.parse_args()
  audit = _load_audit()

  root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="audit_scale_"))
  try:
    t0 = time.perf_counter()
    (tp, tl, tg, ts), (ep, el, eg, es), planted = write_files(root / "data", args.n)
    gen_s = time.perf_counter() - t0
    splits = {"train": audit.AuditSplit("train", tp, tl, tg, ts),
              "eval": audit.AuditSplit("eval", ep, el, eg, es)}
    cache = root / "cache.sqlite"
    runs = {}
    for name in ("cold", "warm"):
      t0 = time.perf_counter()
      res = audit.run_audit(splits, cache, workers=args.workers, hamming=args.hamming,
                            max_listed=1000)
      runs[name] = (time.perf_counter() - t0, res)
    cold_s, cold = runs["cold"]
    warm_s, warm = runs["warm"]
    n = cold["files"]["unique_files"]
    nd, ex = cold["near_duplicates"], cold["exact_duplicates"]
    print(json.dumps({
        "n_files": n, "cpu_count": os.cpu_count(), "workers": cold["config"]["workers"],
        "generate_s": round(gen_s, 2),
        "cold_s": round(cold_s, 2), "cold_per_file_ms": round(1000 * cold_s / n, 3),
        "cold_read_per_file_ms": round(1000 * cold["timings"]["read"] / n, 3),
        "warm_s": round(warm_s, 2), "warm_per_file_us": round(1e6 * warm_s / n, 1),
        "warm_opened_files": warm["files"]["read"],
        "near_dup_search_s": round(nd["search"]["seconds"], 3),
        "near_dup_search": {k: nd["search"][k]
                            for k in ("method", "bands", "radius", "candidates")},
        "found": {"exact_cross_split_pairs": ex["pairs_by_split_pair"].get("train~eval", 0),
                  "near_cross_split_pairs": nd["pairs_by_split_pair"].get("train~eval", 0),
                  "planted_each": len(planted),
                  "planted_near_found": sum({p["a"]["path"], p["b"]["path"]} in planted
                                            for p in nd["listed"])},
        "cold_timings_s": {k: round(v, 3) for k, v in cold["timings"].items()},
        "warm_timings_s": {k: round(v, 3) for k, v in warm["timings"].items()},
    }, indent=1))
  finally:
    if not args.dir:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
