"""The HTTP routes (aiohttp): the page, health, the model's description and
scoring. Every error is JSON `{"error": ...}` with a 4xx/5xx status, and the
server keeps serving after it; one log line per request (`AccessLog`).

Clients send image bytes; no route takes or opens a file-system path (the
page's three files are read from the package once, at start-up).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import os
from importlib import resources
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from cmfl_jax.serving import batcher as batcher_lib
from cmfl_jax.serving import limits as limits_lib

log = logging.getLogger("cmfl_jax.serve")

#: URL -> (package file, content type) of the page.
STATIC = {"/": ("index.html", "text/html"), "/static/app.js": ("app.js", "text/javascript"),
          "/static/style.css": ("style.css", "text/css")}


@dataclasses.dataclass
class State:
  """What the routes share: the model (None while loading) and its batcher."""

  limits: limits_lib.Limits
  max_pending: int = 64
  max_wait: float = 0.005
  model: Any = None  # model.ScoringModel once compiled
  batcher: batcher_lib.Batcher | None = None
  decode_pool: concurrent.futures.ThreadPoolExecutor = dataclasses.field(
      default_factory=lambda: concurrent.futures.ThreadPoolExecutor(
          max(2, os.cpu_count() or 1), thread_name_prefix="decode"))

  def ready(self, model) -> None:
    """Starts batching for `model` (in the event loop's thread)."""
    self.limits = model.limits
    self.batcher = batcher_lib.Batcher(model.run, model.batch_size, self.max_wait,
                                       self.max_pending)
    self.batcher.start()
    self.model = model


STATE = web.AppKey("state", State)
NOTE = web.RequestKey("note", str)  # what the access log line adds


def error(status: int, message: str, headers: dict | None = None) -> web.Response:
  return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
  """aiohttp's own HTTP errors (404, 405, 413), refusals and crashes as JSON."""
  try:
    return await handler(request)
  except web.HTTPException as e:
    if e.status < 400:
      raise
    keep = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}
    message = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
    return error(e.status, message.strip(), keep)
  except limits_lib.Rejected as e:
    return error(e.status, e.reason)
  except batcher_lib.Busy as e:
    return error(503, str(e), {"Retry-After": str(e.retry_after)})
  except Exception as e:  # noqa: BLE001 - one bad request never takes the server down
    log.exception("internal error on %s %s", request.method, request.path)
    return error(500, f"internal error ({type(e).__name__})")


class AccessLog(AbstractAccessLogger):
  """One line per request: client, method, path, status, bytes, ms, note."""

  def log(self, request, response, time):  # noqa: D102
    self.logger.info("%s %s %s %d %d %.1fms %s", request.remote, request.method,
                     request.path_qs, response.status, response.body_length, time * 1000,
                     request.get(NOTE, ""))


async def _body(request: web.Request, max_bytes: int) -> bytes:
  """The image: the raw body, or the multipart field `image`; 413 past `max_bytes`."""
  if request.content_length is not None and request.content_length > max_bytes:
    raise limits_lib.Rejected(413, f"body too large ({request.content_length} bytes > "
                              f"{max_bytes})")
  if not request.content_type.startswith("multipart/"):
    return await request.read()  # the app's client_max_size bounds it (413)
  reader = await request.multipart()
  async for part in reader:
    if part.name != "image":
      continue
    data = bytearray()
    while chunk := await part.read_chunk():
      data += chunk
      if len(data) > max_bytes:
        raise limits_lib.Rejected(413, f"image field larger than {max_bytes} bytes")
    return bytes(data)
  raise limits_lib.Rejected(400, "multipart body without an 'image' field")


def _prepare(model, data: bytes) -> tuple[np.ndarray, list[dict] | None]:
  """Checked and decoded model inputs (one, or one per face with --align)."""
  limits_lib.check_image_bytes(data, model.limits)
  if model.faces is None:
    return model.decode(data)[None], None
  found = model.faces(data)
  if not found:
    raise limits_lib.Rejected(422, "no face found (the server runs with --align)")
  return np.stack([f.pop("image") for f in found]), found


async def score(request: web.Request) -> web.Response:
  state = request.app[STATE]
  model = state.model
  if model is None:
    return error(503, "model loading", {"Retry-After": "5"})
  loop = asyncio.get_running_loop()
  with state.batcher.admit():
    data = await _body(request, state.limits.max_bytes)
    images, faces = await loop.run_in_executor(state.decode_pool, _prepare, model, data)
    batch = await loop.run_in_executor(state.decode_pool, model.variants, images)
    scored = model.combine(await state.batcher.score(batch))
    if model.maps is not None and request.query.get("explain") == "1":
      for entry, maps in zip(scored, await state.batcher.call(model.maps, images)):
        entry["explanation"] = maps
  if faces:
    answers = [{**model.answer(r, face.pop("unsupported", None)), **face}
               for face, r in zip(faces, scored)]
    body = {**answers[0], "faces": answers, "face_box": answers[0]["box"]}
  else:
    body = {**model.answer(scored[0]), "faces": None, "face_box": None}
  request[NOTE] = f"p_real={body['p_real']:.6f} verdict={body['verdict']}" + (
      f" generator={body['generator']}" if "generator" in body else "") + (
      f" faces={len(faces)}" if faces else "")
  return web.json_response(body)


async def healthz(request: web.Request) -> web.Response:
  state = request.app[STATE]
  if state.model is None:
    return error(503, "model loading", {"Retry-After": "5"})
  return web.json_response({"status": "ok", "pending": state.batcher.pending})


async def describe(request: web.Request) -> web.Response:
  state = request.app[STATE]
  if state.model is None:
    return error(503, "model loading", {"Retry-After": "5"})
  return web.Response(text=json.dumps(state.model.description, default=str),
                      content_type="application/json")


def _static_routes() -> list[web.RouteDef]:
  files = resources.files("cmfl_jax.serving") / "static"
  routes = []
  for url, (name, kind) in STATIC.items():
    body = (files / name).read_bytes()

    async def serve_file(_, body=body, kind=kind):
      return web.Response(body=body, content_type=kind, headers={"Cache-Control": "no-cache"})

    routes.append(web.get(url, serve_file))
  return routes


def make_app(state: State) -> web.Application:
  """The application; `state.ready(model)` makes it score."""
  app = web.Application(middlewares=[json_errors], client_max_size=state.limits.max_bytes)
  app[STATE] = state
  app.add_routes([*_static_routes(), web.get("/healthz", healthz),
                  web.get("/v1/model", describe), web.post("/v1/score", score)])

  async def stop_batcher(app):
    if app[STATE].batcher:
      await app[STATE].batcher.stop()
    app[STATE].decode_pool.shutdown(wait=False, cancel_futures=True)

  app.on_cleanup.append(stop_batcher)
  return app
