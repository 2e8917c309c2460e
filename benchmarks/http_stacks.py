"""The HTTP stack's own cost, without the model: the same trivial endpoint
(POST an image body, answer a small JSON) on aiohttp and on Starlette +
uvicorn, each in a subprocess on loopback, driven by aiohttp clients as in
benchmarks/serve_load.py. Prints one JSON object.

  python benchmarks/http_stacks.py [--concurrency 1 8 64] [--seconds 5]

Needs `starlette` and `uvicorn` (pip install starlette uvicorn); a stack that
is not installed is reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_load  # noqa: E402

SERVERS = {
    "aiohttp": textwrap.dedent("""
        import sys
        from aiohttp import web
        async def score(request):
          body = await request.read()
          return web.json_response({"p_real": 0.5, "bytes": len(body)})
        async def health(request):
          return web.json_response({"status": "ok"})
        app = web.Application(client_max_size=20 * 2**20)
        app.add_routes([web.post("/v1/score", score), web.get("/healthz", health)])
        web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
        """),
    "starlette+uvicorn": textwrap.dedent("""
        import sys
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route
        async def score(request):
          body = await request.body()
          return JSONResponse({"p_real": 0.5, "bytes": len(body)})
        async def health(request):
          return JSONResponse({"status": "ok"})
        app = Starlette(routes=[Route("/v1/score", score, methods=["POST"]),
                                Route("/healthz", health)])
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False,
                    log_level="warning")
        """),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--size", type=int, default=32)
  args = parser.parse_args()
  image = np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, "PNG")
  results = {}
  for name, code in SERVERS.items():
    port = serve_load._free_port()  # noqa: SLF001
    proc = subprocess.Popen([sys.executable, "-c", code, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
      serve_load._wait_ready(f"http://127.0.0.1:{port}", proc, timeout=60)  # noqa: SLF001
    except SystemExit:
      results[name] = {"skipped": proc.stderr.read().decode()[-300:]}
      continue
    try:
      results[name] = [asyncio.run(serve_load._level(  # noqa: SLF001
          f"http://127.0.0.1:{port}", buffer.getvalue(), c, args.seconds, 100_000))
                       for c in args.concurrency]
    finally:
      proc.terminate()
      proc.wait(30)
  print(json.dumps({"load_average": os.getloadavg(), "cpus": os.cpu_count(),
                    "stacks": results}, indent=1))


if __name__ == "__main__":
  main()
