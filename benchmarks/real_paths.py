"""Per-file cost of the realpath resolver (`file_cache.RealPaths`) through its
two callers: protocol filenames checked against the data root
(`readers.UnderRoot`) and the file check's cache names
(`file_cache.stat_keys(real=True)`), against one os.path.realpath per file.
Prints one JSON object (median of --repeats runs, microseconds per file).

  python benchmarks/real_paths.py 20000
  git archive daec2ce | tar -x -C /tmp/old    # the code before the resolvers were merged
  python benchmarks/real_paths.py 10000 --repeats 15 --before=/tmp/old

With --before, that checkout's `UnderRoot` and `stat_keys` are loaded beside
the current ones and all four are timed interleaved in one process (fairer
than two runs on a loaded machine).

N empty files in directories of 1,000, half of them reached through a
symlinked directory, one in 50 a symlink to another file: the cases the
resolver handles, in a tree whose directories are in the kernel's caches.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_tree(root: Path, n: int) -> list[str]:
  """root/d<k>/<i>.png (empty), root/l<k> -> d<k>; returns the relative names."""
  names = []
  for i in range(n):
    k = i // 1000
    d = root / f"d{k}"
    if i % 1000 == 0:
      d.mkdir(parents=True)
      (root / f"l{k}").symlink_to(d)
    if i % 50 == 49:
      (d / f"{i}.png").symlink_to(d / f"{i - 1}.png")
    else:
      (d / f"{i}.png").touch()
    names.append(f"{'l' if i % 2 else 'd'}{k}/{i}.png")
  return names


def _load(name: str, path: Path):
  """A module of another checkout, under a name of its own."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("n", type=int, nargs="?", default=20000, help="number of files")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--before", default=None, help="another checkout to compare with")
  args = ap.parse_args()
  sys.path.insert(0, str(ROOT))
  from cmfl_jax.data import file_cache, readers

  root = Path(tempfile.mkdtemp(prefix="real_paths_"))
  try:
    names = write_tree(root / "data", args.n)
    paths = [str(root / "data" / r) for r in names]

    def callers(file_cache_mod, readers_mod):
      def under_root():
        resolve = readers_mod.UnderRoot(str(root / "data"))
        return [resolve(r, "p.csv") for r in names]

      def stat_keys():
        return file_cache_mod.stat_keys(paths, real=True)[0]
      return under_root, stat_keys

    fns = dict(zip(("under_root", "stat_keys"), callers(file_cache, readers)))
    if args.before:
      data = Path(args.before) / "cmfl_jax" / "data"
      old = callers(_load("before_file_cache", data / "file_cache.py"),
                    _load("before_readers", data / "readers.py"))
      fns.update(zip(("under_root_before", "stat_keys_before"), old))
    fns["realpath_each"] = lambda: [os.path.realpath(p) for p in paths]
    want = fns["realpath_each"]()
    assert all(fn() == want for fn in fns.values())
    times = {name: [] for name in fns}
    for _ in range(args.repeats):
      for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t0)
    out = {"n_files": args.n, "repeats": args.repeats}
    out.update({f"{name}_us_per_file": round(1e6 * statistics.median(t) / args.n, 2)
                for name, t in times.items()})
    print(json.dumps(out))
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
