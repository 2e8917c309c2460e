"""Slow uploads against `python -m cmfl_jax.serve` (issue #39): N clients
send the headers of a POST with a Content-Length, then one byte every
--interval seconds; meanwhile a normal client uploads a PNG every second.
Prints one JSON object: the normal uploads' statuses and latencies, what the
slow clients got and when, and /healthz after.

  python benchmarks/slow_clients.py --workdir=DIR [--slow 80] [--interval 3] \
      [--seconds 20] [--server_args=--body_timeout_s=10]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import _free_port, _wait_ready  # noqa: E402


async def _slow(host: str, port: int, interval: float, length: int, started: float) -> dict:
  reader, writer = await asyncio.open_connection(host, port)
  writer.write(f"POST /v1/score HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
               f"application/octet-stream\r\nContent-Length: {length}\r\n\r\n".encode())

  async def trickle():
    for _ in range(length):
      writer.write(b"\x89")
      await writer.drain()
      await asyncio.sleep(interval)

  sending = asyncio.ensure_future(trickle())
  try:
    line = await reader.readline()
  except ConnectionError as e:
    line = f"HTTP/1.1 reset({type(e).__name__})".encode()
  finally:
    sending.cancel()
    writer.close()
  parts = line.split()
  return {"status": parts[1].decode() if len(parts) > 1 else "closed",
          "after_s": round(time.monotonic() - started, 1)}


async def _normal(url: str, body: bytes, seconds: float) -> list[dict]:
  import aiohttp
  out = []
  async with aiohttp.ClientSession() as session:
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
      start = time.perf_counter()
      async with session.post(url + "/v1/score", data=body) as r:
        await r.read()
        out.append({"status": r.status, "ms": round((time.perf_counter() - start) * 1000, 1)})
      await asyncio.sleep(1.0)
  return out


async def _run(url: str, slow: int, interval: float, seconds: float, body: bytes) -> dict:
  host, port = url.split("//")[1].split(":")
  started = time.monotonic()
  clients = [asyncio.ensure_future(_slow(host, int(port), interval, 100_000, started))
             for _ in range(slow)]
  await asyncio.sleep(2.0)  # all connected and trickling
  normal = await _normal(url, body, seconds)
  with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
    during = json.loads(r.read())
  for c in clients:
    c.cancel()
  slow_done = [c.result() for c in clients if c.done() and not c.cancelled()]
  await asyncio.sleep(1.0)
  with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
    after = {"status": r.status, **json.loads(r.read())}
  statuses = {}
  for s in slow_done:
    statuses[s["status"]] = statuses.get(s["status"], 0) + 1
  return {"normal": normal, "slow_answered": statuses,
          "slow_answered_after_s": sorted({s["after_s"] for s in slow_done})[:5],
          "slow_still_open_at_end": slow - len(slow_done), "healthz_during": during,
          "healthz_after": after}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--slow", type=int, default=80)
  parser.add_argument("--interval", type=float, default=3.0)
  parser.add_argument("--seconds", type=float, default=20.0)
  parser.add_argument("--server_args", nargs="*", default=[])
  args = parser.parse_args()
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen([sys.executable, "-m", "cmfl_jax.serve", f"--workdir={args.workdir}",
                           f"--port={port}", *args.server_args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS",
                                                                           "cpu")))
  try:
    _wait_ready(url, proc)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(
        buffer, "PNG")
    result = asyncio.run(_run(url, args.slow, args.interval, args.seconds, buffer.getvalue()))
  finally:
    proc.terminate()
    proc.wait(30)
  print(json.dumps({"load_average": os.getloadavg(), "slow_clients": args.slow,
                    "interval_s": args.interval, "server_args": args.server_args, **result},
                   indent=1))


if __name__ == "__main__":
  main()
