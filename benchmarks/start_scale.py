"""What a training start costs before its first step, as the number of files grows:
parsing the protocol CSVs, the up-front file check (`sources.load_splits`) with an
empty and with a warm per-file cache, the index's host memory, the data audit (warm)
and the first tf.data batch. Prints one JSON object.

  python benchmarks/start_scale.py 10000
  python benchmarks/start_scale.py 100000          # the paper's protocol shape

N files in the official protocol shape: 70% train, 30% dev rows of
`subject,filename,attack_type` (half bona fide, half one generator, as one protocol
of the paper), small PNGs (64x64 by default, each with its own content), so the
numbers are per-file overheads (stat, cache, CSV, index), not decode throughput of
real-sized faces. Model initialisation and compilation come after all of this and
do not depend on N; they are not included.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = "stylegan2"


def _picture(rng: np.random.Generator, size: int) -> Image.Image:
  grid = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
  a = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), np.int16)
  a = a + rng.integers(-3, 4, a.shape, dtype=np.int16)
  return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def write_dataset(root: Path, n: int, size: int, seed: int = 0) -> tuple[Path, Path, dict]:
  """root/data/<split>/<real|generator>/<k>/<i>.png and root/protocols/<split>.csv;
  returns (data_root, protocol_dir, rows per split)."""
  data, proto = root / "data", root / "protocols"
  proto.mkdir(parents=True)
  n_train = round(0.7 * n)
  counts = {"train": n_train, "dev": n - n_train}
  jobs, rows = [], {}
  for split, m in counts.items():
    rows[split] = []
    for i in range(m):
      attack = GENERATOR if i % 2 else ""
      rel = f"{split}/{attack or 'real'}/{i // 2000:03d}/{i}.png"
      rows[split].append((f"{split}_s{i // 20}", rel, attack))
      jobs.append(rel)
  for d in {os.path.dirname(r) for r in jobs}:
    (data / d).mkdir(parents=True, exist_ok=True)

  def write(chunk: tuple[int, list[str]]) -> None:
    rng = np.random.default_rng([seed, chunk[0]])
    for rel in chunk[1]:
      _picture(rng, size).save(data / rel, "PNG")
  chunks = list(enumerate(jobs[i:i + 1000] for i in range(0, len(jobs), 1000)))
  with cf.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    list(pool.map(write, chunks))
  for split, rs in rows.items():
    with open(proto / f"{split}.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["subject", "filename", "attack_type"])
      w.writerows(rs)
  return data, proto, counts


def _realpath_per_row(csv_path: Path, data_root: Path) -> None:
  """The former resolution (a realpath and a commonpath per row), for comparison."""
  root_real = os.path.realpath(data_root)
  with open(csv_path, newline="") as f:
    reader = csv.reader(f)
    next(reader)
    for row in reader:
      full = os.path.realpath(os.path.join(root_real, row[1].strip()))
      assert os.path.commonpath([root_real, full]) == root_real


def _timed(fn, *args, **kw):
  t0 = time.perf_counter()
  out = fn(*args, **kw)
  return time.perf_counter() - t0, out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("n", type=int, nargs="?", default=100000, help="number of files")
  ap.add_argument("--size", type=int, default=64, help="image side in pixels")
  ap.add_argument("--verify", default="decode", choices=("decode", "header"))
  ap.add_argument("--batch", type=int, default=32, help="global batch of the first batch")
  ap.add_argument("--dir", default=None, help="where to write (default: a temp dir, removed)")
  args = ap.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, str(ROOT))
  import runpy

  from cmfl_jax.data import pipeline, readers, sources
  from cmfl_jax.data.auditing import configured as audit_entry

  root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="start_scale_"))
  try:
    gen_s, (data_root, proto, counts) = _timed(write_dataset, root, args.n, args.size)
    cache = root / "cache" / "metadata.sqlite"
    config = runpy.run_path(str(ROOT / "configs" / "default.py"))["get_config"]()
    data = config.data
    data.update(dict(source="csv", data_root=str(data_root), protocol_dir=str(proto),
                     image_size=args.size, eval_splits=(), verify=args.verify,
                     audit_cache=str(cache), verify_cache=""))  # one cache file for both
    names = [data.train_split, data.val_split]
    out: dict = {"n_files": args.n, "rows": counts, "image_size": args.size,
                 "verify": args.verify, "cpu_count": os.cpu_count(), "generate_s": round(gen_s, 1)}

    # Protocol CSVs alone (both splits), and the former per-row realpath for comparison.
    parse_s = [_timed(readers.read_protocol_csv, str(proto / f"{s}.csv"), str(data_root))[0]
               for s in names]
    out["csv_parse_s"] = round(sum(parse_s), 3)
    out["csv_parse_former_realpath_s"] = round(sum(
        _timed(_realpath_per_row, proto / f"{s}.csv", data_root)[0] for s in names), 3)

    # The file check: empty cache, then warm (twice: the second one under tracemalloc).
    cold_s, (splits, skipped) = _timed(sources.load_splits, data, names)
    assert not skipped and sum(len(s) for s in splits.values()) == args.n, skipped[:3]
    warm_s, _ = _timed(sources.load_splits, data, names)
    del splits
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    splits, skipped = sources.load_splits(data, names)
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.update({
        "load_splits_cold_s": round(cold_s, 2),
        "load_splits_cold_per_file_ms": round(1000 * cold_s / args.n, 3),
        "load_splits_warm_s": round(warm_s, 2),
        "load_splits_warm_per_file_us": round(1e6 * warm_s / args.n, 1),
        "index_peak_mb": round(peak / 2**20, 1), "index_retained_mb": round(retained / 2**20, 1),
        "maxrss_delta_mb": round((rss1 - rss0) / 1024, 1),
    })

    # The rest of what runs before the first step: the audit (cold once to fill its
    # cache, then warm), the data report, the first batch of the training pipeline.
    workdir = str(root / "run")
    audit_cold_s, _ = _timed(audit_entry.audit_data, data, workdir, names)
    audit_warm_s, result = _timed(audit_entry.audit_data, data, workdir, names)
    assert result["files"]["read"] == 0, result["files"]
    report_s, _ = _timed(pipeline.report_skipped, skipped, workdir,
                         extra=audit_entry.summary(result))
    train = splits[data.train_split]
    t0 = time.perf_counter()
    pipeline.steps_per_epoch(train, args.batch, data.balance, config.seed)
    batch = next(iter(pipeline.train_dataset(train, data, args.batch, config.seed, 0)))
    first_batch_s = time.perf_counter() - t0
    assert batch["image"].shape[0] == args.batch
    out.update({
        "audit_cold_s": round(audit_cold_s, 2), "audit_warm_s": round(audit_warm_s, 2),
        "audit_warm_timings_s": {k: round(v, 3) for k, v in result["timings"].items()},
        "report_s": round(report_s, 3), "first_batch_s": round(first_batch_s, 2),
        "start_to_first_step_warm_s": round(warm_s + audit_warm_s + report_s + first_batch_s, 2),
        "not_included": "model initialisation and compilation (independent of N)",
    })
    print(json.dumps(out, indent=1))
  finally:
    if not args.dir:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
