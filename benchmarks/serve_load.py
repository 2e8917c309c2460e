"""Throughput and latency of `python -m cmfl_jax.serve` under N concurrent
clients, on loopback. Starts the server on a free port (or uses --url), waits
for /healthz, then for each concurrency runs every client in a loop (POST of
the same PNG) for --seconds after a short warm-up. Prints one JSON object.

  python benchmarks/serve_load.py --workdir=DIR [--concurrency 1 8 64] [--seconds 10]
      [--starts 2]   # start-up to healthy, timed per start (the first fills the
                     # compilation cache, the next find it warm)

Each concurrency is bounded by --seconds and --max_requests; answers other
than 200 (503 when the queue is full) are counted, not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
from PIL import Image


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 300) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc is not None and proc.poll() is not None:
      raise SystemExit(f"server exited with {proc.returncode}")
    try:
      with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
        if r.status == 200:
          return
    except OSError:
      pass
    time.sleep(0.2)
  raise SystemExit("server not ready in time")


def _cpu_seconds(pid: int) -> float | None:
  """User + system CPU seconds of a process so far (Linux /proc): on shared
  cores the wall time to healthy depends on the other jobs, this does not."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
  except (OSError, IndexError, ValueError):
    return None


async def _level(url: str, body: bytes, clients: int, seconds: float, max_requests: int,
                 query: str = "") -> dict:
  import aiohttp
  latencies, other = [], 0
  connector = aiohttp.TCPConnector(limit=clients)
  async with aiohttp.ClientSession(connector=connector) as session:
    async def one() -> None:
      nonlocal other
      start = time.perf_counter()
      async with session.post(url + "/v1/score" + query, data=body) as r:
        await r.read()
        if r.status == 200:
          latencies.append(time.perf_counter() - start)
        else:
          other += 1

    warm_end = time.monotonic() + min(2.0, seconds / 4)
    async def client(stop_at: float, record: bool) -> None:
      while time.monotonic() < stop_at and (not record or len(latencies) + other < max_requests):
        await one()

    await asyncio.gather(*(client(warm_end, False) for _ in range(clients)))
    latencies.clear()
    other = 0
    start = time.perf_counter()
    await asyncio.gather(*(client(time.monotonic() + seconds, True) for _ in range(clients)))
    wall = time.perf_counter() - start
  ms = np.asarray(latencies) * 1000
  return {"clients": clients, "requests": len(latencies), "non_200": other,
          "seconds": round(wall, 2), "requests_per_sec": round(len(latencies) / wall, 1),
          "p50_ms": round(float(np.percentile(ms, 50)), 1),
          "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", help="start `cmfl_jax.serve --workdir` on a free port")
  parser.add_argument("--url", help="or measure a running server")
  parser.add_argument("--size", type=int, default=32, help="side of the PNG sent")
  parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--max_requests", type=int, default=5000)
  parser.add_argument("--server_args", nargs="*", default=[])
  parser.add_argument("--explain", action="store_true", help="ask for the explanation "
                      "(?explain=1), as the page does")
  parser.add_argument("--starts", type=int, default=1, help="with --workdir: start the server "
                      "this many times (timing each start to healthy), measure on the last")
  args = parser.parse_args()
  if bool(args.workdir) == bool(args.url):
    parser.error("give one of --workdir or --url")
  proc, url, startups = None, args.url, []

  def start() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cmfl_jax.serve", f"--workdir={args.workdir}",
                             f"--port={port}", *args.server_args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS",
                                                                             "cpu")))
  try:
    for k in range(args.starts if args.workdir else 0):
      port = _free_port()
      url = f"http://127.0.0.1:{port}"
      began = time.perf_counter()
      proc = start()
      _wait_ready(url, proc)
      startups.append({"wall_s": round(time.perf_counter() - began, 2),
                       "cpu_s": _cpu_seconds(proc.pid)})
      if k + 1 < args.starts:
        proc.terminate()
        proc.wait(30)
    _wait_ready(url, proc)
    image = np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    query = "?explain=1" if args.explain else ""
    levels = [asyncio.run(_level(url, buffer.getvalue(), c, args.seconds, args.max_requests,
                                 query)) for c in args.concurrency]
  finally:
    if proc is not None:
      proc.terminate()
      proc.wait(30)
  print(json.dumps({"load_average": os.getloadavg(), "cpus": os.cpu_count(),
                    "image": f"{args.size}x{args.size} PNG", "startup_s": startups,
                    "server_args": args.server_args, "explain": args.explain,
                    "levels": levels}, indent=1))


if __name__ == "__main__":
  main()
