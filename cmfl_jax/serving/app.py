"""The HTTP routes (aiohttp): the page, health, the model's description and
scoring. Every error is JSON `{"error": ...}` with a 4xx/5xx status, and the
server keeps serving after it; one log line per request (`AccessLog`).

Clients send image bytes; no route takes or opens a file-system path (the
page's three files are read from the package once, at start-up).

What a client can hold, and for how long (see docs/security.md): a body is
read under a deadline (`body_timeout`, 408 past it) by at most `max_readers`
requests at once, whose received bytes together stay under `max_buffered`;
a scoring slot (`max_pending`) is taken only once the body is in, so slow
uploads cannot starve the scoring; decoding holds pixels from a budget
(`limits.PixelBudget`), not one thread's worth each.
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


#: Multipart parts other than `image` (a form's filename field, say): their
#: bytes each, and how many parts a body may have.
OTHER_PART_BYTES, MAX_PARTS = 64 * 1024, 16
CHUNK = 64 * 1024


@dataclasses.dataclass
class State:
  """What the routes share: the model (None while loading), its batcher, and
  the bounds on what clients hold (module docstring). `decode_pixels`: the
  pixel budget of decoding (None: twice the largest image allowed)."""

  limits: limits_lib.Limits
  max_pending: int = 64
  max_wait: float = 0.005
  body_timeout: float = 30.0
  max_readers: int = 1024
  max_buffered: int = 512 * 2**20
  decode_pixels: int | None = None
  result_timeout: float = 60.0
  model: Any = None  # model.ScoringModel once compiled
  batcher: batcher_lib.Batcher | None = None
  readers: int = 0   # bodies being received now
  buffered: int = 0  # their bytes, and those of bodies not yet answered
  decode_budget: limits_lib.PixelBudget | None = None
  decode_pool: concurrent.futures.ThreadPoolExecutor = dataclasses.field(
      default_factory=lambda: concurrent.futures.ThreadPoolExecutor(
          max(2, os.cpu_count() or 1), thread_name_prefix="decode"))

  def __post_init__(self):
    self.max_buffered = max(self.max_buffered, self.limits.max_bytes)

  def ready(self, model) -> None:
    """Starts batching for `model` (in the event loop's thread)."""
    self.limits = model.limits
    self.decode_budget = limits_lib.PixelBudget(self.decode_pixels
                                                or 2 * self.limits.max_pixels)
    self.batcher = batcher_lib.Batcher(model.run, model.batch_size, self.max_wait,
                                       self.max_pending, self.result_timeout)
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
  except batcher_lib.TimedOut as e:
    return error(503, f"scoring timed out ({e})", {"Retry-After": "5"})
  except Exception as e:  # noqa: BLE001 - one bad request never takes the server down
    log.exception("internal error on %s %s", request.method, request.path)
    return error(500, f"internal error ({type(e).__name__})")


class AccessLog(AbstractAccessLogger):
  """One line per request: client, method, path, status, bytes, ms, note."""

  def log(self, request, response, time):  # noqa: D102
    self.logger.info("%s %s %s %d %d %.1fms %s", request.remote, request.method,
                     request.path_qs, response.status, response.body_length, time * 1000,
                     request.get(NOTE, ""))


class _Held:
  """The bytes one request has received, counted in `State.buffered` until
  it is answered; 503 when the total would pass `max_buffered`."""

  def __init__(self, state: State):
    self.state, self.bytes = state, 0

  def add(self, n: int) -> None:
    if self.state.buffered + n > self.state.max_buffered:
      raise batcher_lib.Busy(1)
    self.state.buffered += n
    self.bytes += n

  def release(self) -> None:
    self.state.buffered -= self.bytes
    self.bytes = 0


async def _chunks(stream, limit: int, held: _Held, what: str) -> bytes:
  data = bytearray()
  while chunk := await stream(CHUNK):
    if len(data) + len(chunk) > limit:
      raise limits_lib.Rejected(413, f"{what} larger than {limit} bytes")
    held.add(len(chunk))
    data += chunk
  return bytes(data)


async def _read_image(request: web.Request, max_bytes: int, held: _Held) -> bytes:
  """The raw body, or the multipart field `image` (other parts bounded)."""
  if not request.content_type.startswith("multipart/"):
    return await _chunks(request.content.read, max_bytes, held, "body")
  reader = await request.multipart()
  for _ in range(MAX_PARTS):
    part = await reader.next()
    if part is None:
      break
    if part.name == "image":
      return await _chunks(part.read_chunk, max_bytes, held, "image field")
    await _chunks(part.read_chunk, OTHER_PART_BYTES, held, f"multipart field {part.name!r}")
  else:
    raise limits_lib.Rejected(400, f"multipart body with more than {MAX_PARTS} parts")
  raise limits_lib.Rejected(400, "multipart body without an 'image' field")


async def _body(request: web.Request, state: State, held: _Held) -> bytes:
  """The image bytes, read under the deadline and the readers' bounds; 413
  past `max_bytes`, 408 past `body_timeout`, 503 past `max_readers`."""
  max_bytes = state.limits.max_bytes
  if request.content_length is not None and request.content_length > max_bytes:
    raise limits_lib.Rejected(413, f"body too large ({request.content_length} bytes > "
                              f"{max_bytes})")
  if state.readers >= state.max_readers:
    raise batcher_lib.Busy(1)
  state.readers += 1
  try:
    async with asyncio.timeout(state.body_timeout):
      return await _read_image(request, max_bytes, held)
  except TimeoutError:
    raise limits_lib.Rejected(408, f"request body not received within "
                              f"{state.body_timeout:g} s") from None
  finally:
    state.readers -= 1


def _prepare(model, data: bytes, budget: limits_lib.PixelBudget
             ) -> tuple[np.ndarray, list[dict] | None]:
  """Checked and decoded model inputs (one, or one per face with --align),
  decoded while holding the image's pixels from `budget`."""
  pixels = limits_lib.check_image_bytes(data, model.limits)
  with budget.hold(pixels):
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
  if state.batcher.pending >= state.max_pending:  # busy: do not read what cannot be scored
    raise batcher_lib.Busy(max(1, round(state.max_wait + 1)))
  loop = asyncio.get_running_loop()
  held = _Held(state)
  try:
    data = await _body(request, state, held)
    with state.batcher.admit():  # a slot only once the body is in
      images, faces = await loop.run_in_executor(state.decode_pool, _prepare, model, data,
                                                 state.decode_budget)
      batch = await loop.run_in_executor(state.decode_pool, model.variants, images)
      scored = model.combine(await state.batcher.score(batch))
      if model.maps is not None and request.query.get("explain") == "1":
        for entry, maps in zip(scored, await state.batcher.call(model.maps, images)):
          entry["explanation"] = maps
  finally:
    held.release()
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
  return web.json_response({"status": "ok", "pending": state.batcher.pending,
                            "reading": state.readers})


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
