"""Where the README's first command spends its time, cold: runs the main job
(`configs/cross_model.py`) with a fresh TFDS directory and no XLA cache, and
splits its wall time at the log lines that mark each phase.

  python benchmarks/main_job_timeline.py [--out=DIR] [--config=configs/cross_model.py]
      [-- --config.overrides ...]

Prints one JSON line (phases in seconds, every evaluation pass) and a
Markdown table; the run itself is in DIR (default: a fresh temporary one).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STAMP = re.compile(r"^[IWEF]\d{4} (\d\d):(\d\d):(\d\d\.\d+) +\d+ (\S+)\] (.*)$")

#: (phase name, regular expression of the log message that ends it); in order.
MARKERS = (
    ("imports and backend", r"^JAX .* backend"),
    ("benchmark generated and splits loaded", r"^data audit"),
    ("model initialised", r"^model \S+: \d+ parameters"),
    ("first train step (compiles it)", r"^first train step done"),
    ("training and validations", r"^training done"),
    ("restore for evaluation", r"^restored \S+ checkpoint"),
)
_EVAL = re.compile(r"^eval \S+ on (\S+) \[(\S+)\]")


def _seconds(match: re.Match) -> float:
  h, m, s = match.group(1, 2, 3)
  return int(h) * 3600 + int(m) * 60 + float(s)


def timeline(log: str, start: float, end: float) -> dict:
  """Phases and evaluation passes from an absl log; `start`/`end`: the
  process's wall-clock bounds in seconds since midnight (local time)."""
  events, offset, last = [], 0.0, None
  for line in log.splitlines():
    m = _STAMP.match(line)
    if not m:
      continue
    t = _seconds(m) + offset
    if last is not None and t < last - 43200:  # past midnight
      offset += 86400
      t += 86400
    last = t
    events.append((t, m.group(5)))
  phases, at, k = {}, start, 0
  for name, pattern in MARKERS:
    hits = [t for t, msg in events if re.search(pattern, msg) and t >= at]
    if not hits:
      continue
    t = hits[0]
    phases[name] = round(t - at, 1)
    at = t
  passes = []
  for t, msg in events:
    m = _EVAL.match(msg)
    if m and t >= at:
      passes.append({"split": m.group(1), "condition": m.group(2), "seconds": round(t - at, 1)})
      at = t
  phases["evaluation passes"] = round(sum(p["seconds"] for p in passes), 1)
  phases["report and exit"] = round(end - at, 1)
  return {"total": round(end - start, 1), "phases": phases, "passes": passes}


def _now() -> float:
  now = datetime.datetime.now()
  return now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=None, help="Directory for the run (default: temporary).")
  parser.add_argument("--config", default="configs/cross_model.py",
                      help="The job's config (default: README's main job).")
  parser.add_argument("overrides", nargs="*", help="Extra flags for cmfl_jax.main.")
  args = parser.parse_args()
  out = args.out or tempfile.mkdtemp(prefix="main_job_")
  os.makedirs(out, exist_ok=True)
  cmd = [sys.executable, "-m", "cmfl_jax.main", f"--config={args.config}",
         f"--workdir={os.path.join(out, 'run')}",
         f"--config.data.tfds_data_dir={os.path.join(out, 'tfds')}", "--compilation_cache=",
         "--config.train.progress_bar=False", *args.overrides]
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  start, wall = _now(), time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - wall
  with open(os.path.join(out, "main_job.log"), "w") as f:
    f.write(proc.stderr)
  if proc.returncode:
    print(proc.stderr[-3000:], file=sys.stderr)
    return proc.returncode
  result = timeline(proc.stderr, start, start + seconds)
  result.update(command=" ".join(cmd[1:]), load_average=os.getloadavg())
  print(json.dumps(result))
  print("\n| phase | seconds |\n|---|---:|")
  for name, s in result["phases"].items():
    print(f"| {name} | {s} |")
  print(f"| **total** | **{result['total']}** |")
  print("\npasses (s): " + ", ".join(f"{p['split']}[{p['condition']}] {p['seconds']}"
                                     for p in result["passes"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
