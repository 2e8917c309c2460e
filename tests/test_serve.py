"""The scoring service: a real server (subprocess) on a free localhost port,
real HTTP clients (aiohttp), the page in headless Chromium (selenium), and
the batcher / back-pressure on an in-process server with a fake slow model."""

import asyncio
import base64
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import test_utils  # noqa: E402
from helpers import ROOT  # noqa: E402
from PIL import Image  # noqa: E402

MAX_BYTES = 200_000


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
  import urllib.error
  import urllib.request
  try:
    with urllib.request.urlopen(url, timeout=5) as r:
      return r.status, r.read()
  except urllib.error.HTTPError as e:
    return e.code, e.read()


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, fmt)
  return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
  """A PNG that claims width x height: a decompression bomb's header."""
  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def server(reference_run, cache_dir):
  """`python -m cmfl_jax.serve` on the smoke workdir: (base URL, workdir,
  statuses /healthz gave before 200)."""
  workdir, _ = reference_run
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             JAX_COMPILATION_CACHE_DIR=cache_dir)
  log = open(os.path.join(workdir + ".serve.log"), "w")
  proc = subprocess.Popen([sys.executable, "-m", "cmfl_jax.serve", f"--workdir={workdir}",
                           f"--port={port}", f"--max_bytes={MAX_BYTES}", "--batch_size=4",
                           "--explain"],
                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  url, seen = f"http://127.0.0.1:{port}", []
  deadline = time.monotonic() + 240
  try:
    while True:
      assert proc.poll() is None and time.monotonic() < deadline, open(log.name).read()[-3000:]
      try:
        status, _ = _get(url + "/healthz")
      except OSError:
        time.sleep(0.05)
        continue
      seen.append(status)
      if status == 200:
        break
      time.sleep(0.05)
    yield url, workdir, seen, log.name
  finally:
    proc.terminate()
    proc.wait(30)
    log.close()


def _eval_images(n: int) -> list[np.ndarray]:
  import runpy
  from cmfl_jax.data import sources
  config = runpy.run_path(str(ROOT / "configs" / "smoke.py"))["get_config"]()
  splits, _ = sources.load_splits(config.data, ["eval"])
  return list(splits["eval"].images[:n])


async def _post(session, url, data, **kw):
  async with session.post(url + "/v1/score", data=data, **kw) as r:
    return r.status, dict(r.headers), await r.json()


def _paths_in(described) -> list[str]:
  """Strings of a JSON answer that look like a path of the server's disk."""
  if isinstance(described, dict):
    return [p for v in described.values() for p in _paths_in(v)]
  if isinstance(described, list):
    return [p for v in described for p in _paths_in(v)]
  return [described] if isinstance(described, str) and (
      described.startswith(("/", "~")) or ":\\" in described or "/tmp" in described) else []


def test_health_model_page_and_one_line_per_request(server):
  url, workdir, seen, log = server
  assert seen[-1] == 200 and 503 in seen  # bound before the model was ready
  status, body = _get(url + "/v1/model")
  model = json.loads(body)
  assert status == 200 and model["source"] == "checkpoint"
  # What the model is, not where it lives: no config dump, no path of this disk.
  assert "config" not in model and not _paths_in(model) and workdir.encode() not in body
  assert model["architecture"]["backbone"] and model["input"]["size"] == 32
  assert model["serving"]["threshold_source"] == "dev_eer"
  assert model["serving"]["threshold"] == model["checkpoint"]["dev_threshold"]
  assert model["serving"]["batch_size"] == 4  # --batch_size (predict scores in 8s)
  status, page = _get(url + "/")
  assert status == 200 and b'<input id="file" type="file"' in page
  assert b"http" not in page.replace(b"http://www.w3.org", b"")  # nothing from outside
  for asset in (b"/static/app.js", b"/static/style.css"):
    assert asset in page and _get(url + asset.decode())[0] == 200
  access = [l for l in open(log).read().splitlines() if "GET /v1/model 200" in l]
  assert len(access) == 1


def test_concurrent_clients_get_predicts_scores(server, tmp_path):
  """16 clients x 3 requests (raw body and multipart), all answered, each
  p_real equal to predict's score of the same file and the verdict and
  reason predict gives it with its default stability check."""
  from cmfl_jax.scoring import decisions
  from cmfl_jax.verdicts import stability
  url, workdir, _, _ = server
  images = _eval_images(6)
  files = []
  for i, image in enumerate(images):
    files.append(tmp_path / f"{i}.{'jpg' if i == 5 else 'png'}")
    files[-1].write_bytes(_png(image, "JPEG" if i == 5 else "PNG"))
  expected = {r["path"]: r for r in decisions.predict(workdir, [str(f) for f in files],
                                                       stability=stability.CONDITIONS).rows}

  async def client(k, session):
    out = []
    for j in range(3):
      path = files[(k + j) % len(files)]
      if j == 1:
        form = aiohttp.FormData()
        form.add_field("image", path.read_bytes(), filename=path.name)
        out.append((path, await _post(session, url, form)))
      else:  # the third asks for the explanation, as the page does
        out.append((path, await _post(session, url, path.read_bytes(),
                                      params={"explain": "1"} if j == 2 else None)))
    return out

  async def run():
    async with aiohttp.ClientSession() as session:
      return [r for rs in await asyncio.gather(*(client(k, session) for k in range(16)))
              for r in rs]

  answers = asyncio.run(run())
  model_info = json.loads(_get(url + "/v1/model")[1])
  assert model_info["serving"]["explanations"] == "evidence"
  assert model_info["serving"]["stability"] == list(stability.CONDITIONS)
  assert len(answers) == 48
  explained = 0
  for path, (status, _, body) in answers:
    assert status == 200, body
    want = expected[str(path)]
    assert abs(body["p_real"] - want["score"]) <= 1e-6
    assert (body["verdict"], body["reason"]) == (want["verdict"], want["reason"])
    assert set(body["stability"]) == set(stability.CONDITIONS)
    assert set(body["heads"]) == {"joint", "rgb", "freq"}
    assert "generator" not in body and "generator_confidence" not in body  # no such head
    assert body["heads"]["joint"] == body["p_real"] and 0 < body["p_real_platt"] < 1
    probability = body["probability"]  # the page's one number: Platt-scaled, same verdict
    assert probability["platt"] and probability["value"] == body["p_real_platt"]
    if body["verdict"] != "unsure":
      assert (probability["value"] >= probability["threshold"]) == (body["verdict"] == "real")
    if "explanation" not in body:
      continue
    explained += 1
    maps = body["explanation"]  # ?explain=1: the overlay, the frequencies' pattern, the profile
    for picture in ("overlay_png", "pattern_png"):
      assert maps[picture].startswith("data:image/png;base64,")
      with Image.open(io.BytesIO(base64.b64decode(maps[picture].split(",", 1)[1]))) as im:
        assert im.size == (192, 192) and len(set(im.getdata())) > 1
    assert len(maps["profile"]["radius"]) == len(maps["profile"]["evidence"]) > 4
  assert explained == 16  # exactly the requests that asked
  assert _get(url + "/healthz")[0] == 200


def test_bad_inputs_get_4xx_json_and_the_server_keeps_serving(server):
  url, _, _, _ = server
  good = _png(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8))
  bmp = _png(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8), "BMP")
  cases = [  # (method, path, body, status, words in the error)
      ("POST", "/v1/score", os.urandom(MAX_BYTES + 1), 413, "too large"),
      ("POST", "/v1/score", _png_header_only(100_000, 100_000), 413, "too large"),
      ("POST", "/v1/score", _png_header_only(9_000, 9_000), 413, "9000x9000"),
      ("POST", "/v1/score", b"not an image at all\n", 415, "not an image"),
      ("POST", "/v1/score", good[:len(good) // 2], 422, "truncated PNG"),
      ("POST", "/v1/score", bmp[:len(bmp) // 2], 422, "TF"),
      ("POST", "/v1/score", _png(np.zeros((8, 8, 3), np.uint8)), 422, "too small"),
      ("POST", "/v1/score", b"", 400, "empty"),
      ("GET", "/v1/score", None, 405, "Method Not Allowed"),
      ("PUT", "/healthz", b"x", 405, "Method Not Allowed"),
      ("GET", "/etc/passwd", None, 404, "Not Found"),
  ]

  async def run():
    async with aiohttp.ClientSession() as session:
      for method, path, body, status, words in cases:
        async with session.request(method, url + path, data=body) as r:
          got = await r.json()
          assert (r.status, list(got)) == (status, ["error"]), (path, r.status, got)
          assert words in got["error"], got
          if status == 405:
            assert r.headers["Allow"]
        async with session.get(url + "/healthz") as r:
          assert r.status == 200
      form = aiohttp.FormData()
      form.add_field("picture", good, filename="a.png")
      assert (await _post(session, url, form))[0] == 400
      assert (await _post(session, url, good))[0] == 200

  asyncio.run(run())


# ---------------------------------------------------------------------------
# In-process: the batcher and back-pressure, with a fake slow model.

def _fake_model(delay: float, calls: list, faces=None, classes=()):
  """With `classes`, an attribution head too: class 1 above P(real) 0.5, else unknown."""
  from cmfl_jax.serving import limits, model, verdict

  def score(images):
    calls.append(images.shape)
    time.sleep(delay)
    p = images[:, 0, 0, 0].astype(np.float64) / 255
    heads = {"joint": p, "rgb": p, "freq": p}
    if classes:
      heads.update(generator_index=np.where(p > 0.5, 1, -1).astype(np.int32),
                   generator_confidence=p.astype(np.float32))
    return heads

  def decode(data):
    return np.full((4, 4, 3), np.asarray(Image.open(io.BytesIO(data)))[0, 0, 0], np.uint8)

  return model.ScoringModel(4, 4, score, decode, verdict.Policy(0.5, "test"), None,
                            {"source": "test"}, limits.Limits(max_bytes=10_000), faces,
                            classes=classes)


def _served(state, body):
  """Runs `body(session, url)` against `state`'s app on a real localhost port."""
  from cmfl_jax.serving import app as app_lib

  async def run():
    server = test_utils.TestServer(app_lib.make_app(state), host="127.0.0.1")
    await server.start_server()
    try:
      async with aiohttp.ClientSession() as session:
        return await body(session, str(server.make_url("")).rstrip("/"))
    finally:
      await server.close()

  return asyncio.run(run())


def _pixel(value: int) -> bytes:
  return _png(np.full((4, 4, 3), value, np.uint8))


def test_requests_are_batched_into_one_padded_shape():
  """Concurrent requests share batches of at most batch_size; each gets its own result."""
  from cmfl_jax.serving import app as app_lib, limits
  calls = []
  state = app_lib.State(limits.Limits(max_bytes=10_000), max_pending=64, max_wait=0.05)

  async def body(session, url):
    state.ready(_fake_model(0.05, calls))
    return await asyncio.gather(*(_post(session, url, _pixel(v)) for v in range(20)))

  answers = _served(state, body)
  assert [a[2]["p_real"] for a in answers] == pytest.approx([v / 255 for v in range(20)])
  assert all(a[0] == 200 and a[2]["threshold_source"] == "test" for a in answers)
  assert len(calls) < 20 and max(c[0] for c in calls) == 4  # batched, never above batch_size
  assert sum(c[0] for c in calls) == 20


def test_a_batch_is_padded_to_the_smallest_compiled_shape():
  """Shapes 1, 8 and the largest are compiled up front; a lone image runs
  as a batch of 1, 3 as 8, 40 as 32 + 8, and each image keeps its own score."""
  from cmfl_jax.scoring import model as scoring_model
  seen = []

  def call(batch):
    seen.append(len(batch))
    return {"joint": batch[:, 0, 0, 0].astype(np.float32)}

  assert scoring_model.batch_shapes(32) == (1, 8, 32) and scoring_model.batch_shapes(1) == (1,)
  assert scoring_model.batch_shapes(32, unit=3) == (3, 24, 32)  # a request and its 2 variants
  heads = scoring_model.padded_batches(call, scoring_model.batch_shapes(32), 2)
  assert sorted(seen) == [1, 8, 32]  # compiled before the first request
  for n, shapes in ((1, [1]), (3, [8]), (8, [8]), (9, [32]), (40, [32, 8])):
    seen.clear()
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    out = heads(images)
    assert seen == shapes and list(out["joint"]) == list(range(n)), (n, seen)


def test_service_answers_with_predicts_rules_in_plain_words():
  """The service's verdict is `verdicts.decide` with predict's inputs: a face
  too small and a verdict that flips under a stability condition are unsure,
  with the reason in plain words and what would help; a verdict given states
  the comparison; the probability shown is the Platt-scaled one, its threshold
  and band on the same scale."""
  from cmfl_jax.serving import model, verdict
  band = {"lo": 0.4, "hi": 0.6, "target_error": 0.05}
  m = _fake_model(0.0, [])
  m.policy = verdict.Policy(0.5, "dev_eer", band)
  m.platt = {"method": "platt", "a": 2.0, "b": 0.5}
  m.stability = ("jpeg:95",)
  base = {"p_real": 0.9, "heads": {"joint": 0.9}}
  stable = m.answer({**base, "under": {"jpeg:95": 0.85}})
  assert (stable["verdict"], stable["reason"]) == ("real", "score 0.9000 >= 0.6000, the top "
                                                            "of the unsure band")
  assert stable["why"] == stable["help"] == ""
  pr = stable["probability"]
  assert pr["platt"] and pr["value"] == pytest.approx(stable["p_real_platt"])
  assert pr["band"][0] < pr["threshold"] < pr["band"][1] <= pr["value"]
  flipped = m.answer({**base, "under": {"jpeg:95": 0.3}})
  assert flipped["verdict"] == "unsure" and flipped["reason"].startswith("verdict changes after")
  assert "slightly compressed" in flipped["why"] and "less processed" in flipped["help"]
  small = m.answer({**base, "under": {"jpeg:95": 0.85}}, "face too small (12 px, 5.3x upscale)")
  assert small["verdict"] == "unsure" and "face is small" in small["why"]
  assert "larger" in small["help"]
  near = m.answer({"p_real": 0.5, "heads": {"joint": 0.5}, "under": {"jpeg:95": 0.5}})
  assert near["verdict"] == "unsure" and "too close" in near["why"]
  assert "calibrat" in near["help"]
  # Stability variants are made per image and scored in the same batches.
  images = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 200)])
  assert m.variants(images).shape == (4, 4, 4, 3)
  scored = m.combine(m.run(m.variants(images)))
  assert [set(s["under"]) for s in scored] == [{"jpeg:95"}] * 2
  assert scored[1]["p_real"] == pytest.approx(200 / 255)


def test_full_queue_answers_503_with_retry_after_then_recovers():
  from cmfl_jax.serving import app as app_lib, limits
  calls = []
  state = app_lib.State(limits.Limits(max_bytes=10_000), max_pending=2, max_wait=0.0)

  async def body(session, url):
    async with session.get(url + "/healthz") as r:
      assert r.status == 503 and r.headers["Retry-After"]  # no model yet
    state.ready(_fake_model(1.5, calls))
    first = [asyncio.ensure_future(_post(session, url, _pixel(v))) for v in range(2)]
    await asyncio.sleep(0.3)  # both admitted, the model busy for 1.5 s
    refused = await asyncio.gather(*(_post(session, url, _pixel(v)) for v in range(6)))
    return await asyncio.gather(*first), refused, await _post(session, url, _pixel(9))

  first, refused, after = _served(state, body)
  assert [s for s, _, _ in first] == [200, 200]
  for status, headers, got in refused:
    assert status == 503 and int(headers["Retry-After"]) >= 1 and "busy" in got["error"]
  assert after[0] == 200 and state.batcher.pending == 0


async def _slow_upload(host: str, port: int, interval: float, length: int = 1000):
  """A client that sends the headers with Content-Length, then a byte every
  `interval` seconds until answered: (status, seconds until answered)."""
  start = time.monotonic()
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
  finally:
    sending.cancel()
    writer.close()
  return int(line.split()[1]), time.monotonic() - start


def test_slow_uploads_take_no_scoring_slot_and_are_dropped_at_the_deadline():
  """More slow clients than scoring slots (Content-Length sent, a byte every
  0.3 s): a normal upload is still answered 200 at once; the slow ones get
  408 at the body deadline, and the server is healthy after, nothing held."""
  from cmfl_jax.serving import app as app_lib, limits
  state = app_lib.State(limits.Limits(max_bytes=10_000), max_pending=2, max_wait=0.0,
                        body_timeout=2.0)

  async def body(session, url):
    state.ready(_fake_model(0.0, []))
    host, port = url.split("//")[1].split(":")
    slow = [asyncio.ensure_future(_slow_upload(host, int(port), 0.3)) for _ in range(8)]
    await asyncio.sleep(0.5)
    assert state.readers == 8
    start = time.monotonic()
    normal = await _post(session, url, _pixel(7))
    took = time.monotonic() - start
    dropped = await asyncio.gather(*slow)
    async with session.get(url + "/healthz") as r:
      health = r.status, await r.json()
    return normal, took, dropped, health, await _post(session, url, _pixel(9))

  normal, took, dropped, health, after = _served(state, body)
  assert normal[0] == 200 and took < 1.0, (normal, took)
  assert all(status == 408 and 1.9 < seconds < 4 for status, seconds in dropped), dropped
  assert health == (200, {"status": "ok", "pending": 0, "reading": 0})
  assert after[0] == 200 and state.buffered == 0


def test_multipart_parts_other_than_the_image_are_bounded():
  """A part that is not `image` gets OTHER_PART_BYTES, however large the body may be."""
  from cmfl_jax.serving import app as app_lib, limits
  state = app_lib.State(limits.Limits(max_bytes=200_000))
  fake = _fake_model(0.0, [])
  fake.limits = limits.Limits(max_bytes=200_000)

  async def body(session, url):
    state.ready(fake)
    out = []
    for note in (b"a phone photo", b"x" * (app_lib.OTHER_PART_BYTES + 1)):
      form = aiohttp.FormData()
      form.add_field("note", note, filename="note.txt")
      form.add_field("image", _pixel(3), filename="a.png")
      out.append(await _post(session, url, form))
    return out

  (small, large) = _served(state, body)
  assert small[0] == 200
  assert large[0] == 413 and "multipart field 'note' larger than" in large[2]["error"]
  assert state.buffered == 0 and state.readers == 0


def test_decoding_holds_pixels_from_a_budget_not_a_thread_each():
  """8 concurrent uploads, 8 decode threads, a budget of 3 images' pixels:
  never more than 3 are decoded at once."""
  import concurrent.futures
  import threading
  from cmfl_jax.serving import app as app_lib, limits
  state = app_lib.State(limits.Limits(max_bytes=10_000), decode_pixels=3 * 16)
  state.decode_pool = concurrent.futures.ThreadPoolExecutor(8)
  fake = _fake_model(0.0, [])
  lock, now, most = threading.Lock(), [0], [0]
  plain = fake.decode

  def decode(data):
    with lock:
      now[0] += 1
      most[0] = max(most[0], now[0])
    time.sleep(0.2)
    with lock:
      now[0] -= 1
    return plain(data)

  fake.decode = decode

  async def body(session, url):
    state.ready(fake)
    return await asyncio.gather(*(_post(session, url, _pixel(v)) for v in range(8)))

  answers = _served(state, body)
  assert all(a[0] == 200 for a in answers)
  assert most[0] == 3 and state.decode_budget.peak == 48, (most, state.decode_budget.peak)


@pytest.mark.parametrize("fault", ["lost_result", "hang"])
def test_a_lost_or_late_result_fails_its_request_and_frees_its_slot(fault):
  """A scorer that returns one result too few, or never returns in time: the
  request is answered (500, or 503 at the batcher's timeout), not left
  holding its slot."""
  from cmfl_jax.serving import app as app_lib, limits, model
  state = app_lib.State(limits.Limits(max_bytes=10_000), max_pending=1, result_timeout=0.5)
  fake = _fake_model(0.0, [])
  if fault == "lost_result":
    fake.run = lambda images: model.ScoringModel.run(fake, images)[:-1]
  else:
    fake.run = lambda images: time.sleep(2.0) or model.ScoringModel.run(fake, images)

  async def body(session, url):
    state.ready(fake)
    start = time.monotonic()
    failed = await _post(session, url, _pixel(1))
    return failed, time.monotonic() - start, state.batcher.pending

  (status, _, got), took, pending = _served(state, body)
  assert pending == 0 and took < 1.5, (took, pending)
  assert (status, got["error"].split(" (")[0]) == (
      (500, "internal error") if fault == "lost_result" else (503, "scoring timed out"))


def test_paths_that_climb_out_are_not_served():
  """Paths with "..", sent as written (client libraries normalise them, so a
  raw socket): 4xx, and nothing of the repository's files in the answer."""
  from cmfl_jax.serving import app as app_lib, limits
  state = app_lib.State(limits.Limits(max_bytes=10_000))
  readme = (ROOT / "README.md").read_bytes()[:60]

  async def body(session, url):
    state.ready(_fake_model(0.0, []))
    host, port = url.split("//")[1].split(":")
    out = {}
    for target in ("/static/../../README.md", "/static/%2e%2e/%2e%2e/README.md",
                   "/static/..%2f..%2fREADME.md", "/../README.md", "/static/../app.py"):
      reader, writer = await asyncio.open_connection(host, int(port))
      writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
      out[target] = await reader.read()
      writer.close()
    return out

  for target, answer in _served(state, body).items():
    assert answer.split(b" ", 2)[1] in (b"400", b"404"), (target, answer[:200])
    assert readme not in answer and b"def make_app" not in answer, target


def test_faces_are_returned_with_their_boxes():
  """--align answers: every face with its box and scores; the first is the headline."""
  from cmfl_jax.serving import app as app_lib, limits
  faces = lambda data: [{"box": [1.0, 2.0, 3.0, 4.0], "face_score": 0.99,  # noqa: E731
                         "image": np.full((4, 4, 3), 200, np.uint8)},
                        {"box": [5.0, 6.0, 7.0, 8.0], "face_score": 0.9,
                         "image": np.full((4, 4, 3), 10, np.uint8)}]
  state = app_lib.State(limits.Limits(max_bytes=10_000))

  async def body(session, url):
    state.ready(_fake_model(0.0, [], faces))
    return await _post(session, url, _pixel(1))

  status, _, got = _served(state, body)
  assert status == 200 and got["face_box"] == [1.0, 2.0, 3.0, 4.0]
  assert [f["verdict"] for f in got["faces"]] == ["real", "synthetic"]
  assert got["faces"][1]["box"] == [5.0, 6.0, 7.0, 8.0] and got["verdict"] == "real"


def test_face_finder_matches_predict_align(tmp_path):
  """The bytes path of --align finds the face predict --align finds, same input pixels."""
  pytest.importorskip("mtcnn")
  skdata = pytest.importorskip("skimage.data")
  from cmfl_jax.data import aligned_crops as align_files, ops
  from cmfl_jax.scoring import faces
  from cmfl_jax.serving import model
  path = tmp_path / "astronaut.png"
  Image.fromarray(skdata.astronaut()).save(path)
  options, geometry = align_files.AlignOptions(), ops.Geometry(32, True)
  want = faces.aligned_faces(str(path), options, geometry)
  got = model._face_finder(options, geometry)(path.read_bytes())
  assert len(got) == len(want) == 1
  assert got[0]["box"] == pytest.approx([float(v) for v in want[0]["face_box"].split()], abs=0.1)
  np.testing.assert_array_equal(got[0]["image"], want[0]["image"])


def test_align_answers_every_face_with_predicts_verdicts(reference_run, tmp_path):
  """One decision path: a photograph with two faces through the service
  (--align, the defaults of the command: every face, stability check) and
  through predict --align with the same defaults gives the same faces, boxes,
  scores, verdicts and reasons."""
  pytest.importorskip("mtcnn")
  skdata = pytest.importorskip("skimage.data")
  from cmfl_jax import verdicts
  from cmfl_jax.data import aligned_crops
  from cmfl_jax.scoring import decisions
  from cmfl_jax.serving import app as app_lib, limits, model
  workdir, _ = reference_run
  face = skdata.astronaut()
  path = tmp_path / "two.png"
  Image.fromarray(np.concatenate([face, face[:, ::-1]], 1)).save(path)
  options = aligned_crops.AlignOptions(policy="all")
  want = list(decisions.predict(workdir, [str(path)], align=options,
                                stability=verdicts.STABILITY).rows)
  served = model.load(workdir, align=options, stability=verdicts.STABILITY, batch_size=4)
  state = app_lib.State(limits.Limits())

  async def body(session, url):
    state.ready(served)
    return await _post(session, url, path.read_bytes())

  status, _, got = _served(state, body)
  assert status == 200 and len(got["faces"]) == len(want) == 2, (got, want)
  for answer, row in zip(got["faces"], want):
    assert answer["box"] == pytest.approx([float(v) for v in row["face_box"].split()], abs=0.1)
    assert answer["p_real"] == pytest.approx(row["score"], abs=1e-6)
    assert (answer["verdict"], answer["reason"]) == (row["verdict"], row["reason"])


def test_threshold_sources(tmp_path):
  """--calibration=NAME: the stored calibration's threshold and band; else the
  dev ones; else 0.5. An export answers with the calibration it carries."""
  from cmfl_jax.exporting.errors import ExportError
  from cmfl_jax.serving import model
  (tmp_path / "calibrations").mkdir()
  band = {"lo": 0.7, "hi": 0.9, "target_error": 0.05}
  (tmp_path / "calibrations" / "strict.json").write_text(json.dumps(
      {"threshold": 0.8, "false_alarm": 0.05, "kind": "marginal", "n": 40, "k": 2,
       "guarantee": "hand-made", "band": band}))
  dev = {"dev_threshold": 0.4, "unsure_band": {"lo": 0.3, "hi": 0.5, "target_error": 0.05}}
  policy = model._policy(str(tmp_path), None, dev, "strict")
  assert (policy.threshold, policy.source, policy.band) == (0.8, "calibration:strict", band)
  assert policy.decide({"p_real": 0.69})[0] == "synthetic"
  assert policy.decide({"p_real": 0.8}) == ("unsure", policy.decide({"p_real": 0.8})[1])
  assert "unsure band" in policy.decide({"p_real": 0.8})[1]
  assert policy.decide({"p_real": 0.9})[0] == "real"
  by_dev = model._policy(str(tmp_path), None, dev, None)
  assert (by_dev.source, by_dev.band) == ("dev_eer", dev["unsure_band"])
  assert model._policy(str(tmp_path), None, {}, None).threshold == 0.5
  with pytest.raises(ExportError, match="unknown calibration 'lax'"):
    model._policy(str(tmp_path), None, dev, "lax")
  carried = {**dev, "chosen_calibration": {"name": "strict", "threshold": 0.7}}
  assert model._policy(None, "exp", carried, "strict").threshold == 0.7
  assert model._policy(None, "exp", carried, None).source == "calibration:strict"
  with pytest.raises(ExportError, match="carries calibration 'strict', not 'lax'"):
    model._policy(None, "exp", carried, "lax")


def test_model_description_of_an_export_keeps_what_it_is_not_where_it_lives():
  """`public_card`: the card's config, paths and versions stay on the server;
  a card written before #39 (Platt scaling under calibration.platt) reads."""
  from cmfl_jax.serving import model
  old_card = {"format": "cmfl_jax.model_card/1", "config": {"data": {"data_root": "/srv/x"}},
              "architecture": {"arch": "two_stream"}, "input": {"size": 32},
              "checkpoint": {"workdir": "/srv/runs/a", "kind": "best", "step": 3},
              "training_data": {"data_root": "/srv/x", "train_split": "train"},
              "calibration": {"platt": {"method": "platt", "a": 2.0, "b": 0.0},
                              "chosen": {"name": "cam", "threshold": 0.6, "path": "/srv/c.json",
                                         "record": {"threshold": 0.6, "skipped": [
                                             {"path": "/home/u/a.png"}], "n": 40}}},
              "artifacts": {"versions": {"jax": "0.7"}}}
  public = model.public_card(old_card)
  assert "config" not in public and "artifacts" not in public and not _paths_in(public)
  assert public["platt_scaling"] == {"method": "platt", "a": 2.0, "b": 0.0}
  assert public["calibration"]["chosen"] == {"name": "cam", "threshold": 0.6,
                                             "record": {"threshold": 0.6, "n": 40}}
  assert public["checkpoint"]["step"] == 3 and public["training_data"]["train_split"] == "train"


# ---------------------------------------------------------------------------
# The page in a real browser.

def _browser(monkeypatch):
  """Headless Chromium through chromedriver (the test is skipped without it)."""
  if not shutil.which("chromedriver"):
    pytest.skip("chromedriver not installed (apt-get install chromium chromium-driver)")
  webdriver = pytest.importorskip("selenium.webdriver")
  monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager download anything
  options = webdriver.ChromeOptions()
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=900,900"):
    options.add_argument(arg)
  if shutil.which("chromium"):
    options.binary_location = shutil.which("chromium")
  return webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")),
                          options=options)


def test_page_in_headless_chromium_shows_the_verdict(server, tmp_path, monkeypatch):
  """Upload through the page's file input (keyboard-reachable), wait for the
  verdict in words; SERVE_SCREENSHOT=PATH also saves a screenshot there."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.ui import WebDriverWait
  driver = _browser(monkeypatch)
  url, _, _, _ = server
  image = tmp_path / "face.png"
  image.write_bytes(_png(np.asarray(Image.fromarray(_eval_images(1)[0]).resize((160, 160)))))
  try:
    driver.get(url + "/")
    driver.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(driver, 60).until(ec.visibility_of_element_located((By.ID, "verdict")))
    verdict = driver.find_element(By.ID, "verdict")
    assert verdict.text in ("Real face", "Synthetic face", "Unsure")
    # One number, named, in percent; the reason in words.
    headline = driver.find_element(By.ID, "headline").text
    assert headline.startswith("Probability that the face is real (Platt-scaled): ")
    assert headline.endswith(" %") and len(headline.split(": ")[1]) <= 8, headline
    reason = driver.find_element(By.ID, "reason").text
    assert reason.startswith(("Called real", "Called synthetic", "Why unsure")), reason
    assert driver.find_element(By.ID, "help").is_displayed() == (verdict.text == "Unsure")
    # The other numbers are in the closed details, each with a sentence.
    assert not driver.find_element(By.ID, "scores").is_displayed()
    driver.find_element(By.CSS_SELECTOR, "#details summary").click()
    names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#scores dt")]
    notes = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#scores dd.note")]
    assert "P(real), model score" in names and "Decision threshold" in names
    assert len(notes) == len(names) and all(len(n) > 30 for n in notes)
    values = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#scores dd.value")]
    assert all("%" in v and not any(len(w) > 6 for w in v.split()) for v in values), values
    # The explanation: the evidence overlay with its colour bar, the frequency
    # pattern and profile, and the one-line legend.
    assert driver.find_element(By.ID, "explanation").is_displayed()  # --explain
    for picture in ("overlay", "pattern"):
      assert driver.find_element(By.ID, picture).get_attribute("src").startswith("data:image/png")
    assert driver.find_element(By.CSS_SELECTOR, ".colourbar").is_displayed()
    legend = driver.find_element(By.CSS_SELECTOR, ".legend").text
    assert "evidence for synthetic" in legend and "evidence for real" in legend
    assert driver.find_elements(By.CSS_SELECTOR, "#profile rect")
    assert "generator" not in driver.find_element(By.ID, "scores").text  # no such head
    assert "threshold was set where" in driver.find_element(By.ID, "model").text
    if os.environ.get("SERVE_SCREENSHOT"):
      driver.save_screenshot(os.environ["SERVE_SCREENSHOT"])
  finally:
    driver.quit()


def test_bad_workdir_is_one_line_and_frees_the_port(tmp_path, capsys):
  """The command's path (bind, load in a thread, fail): one `error:` line, exit 1."""
  from cmfl_jax import serve
  from cmfl_jax.serving import app as app_lib, limits, model
  port = _free_port()
  load = lambda: model.load(str(tmp_path))  # noqa: E731 - no checkpoints there
  code = asyncio.run(serve.serve("127.0.0.1", port, load, app_lib.State(limits.Limits())))
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1 and err[0].startswith("error:") and "checkpoint" in err[0]
  with socket.socket() as s:
    s.bind(("127.0.0.1", port))  # released


# ---------------------------------------------------------------------------
# The attribution head (issue #33): the generator in each answer and on the page.

def test_answers_name_the_generator_for_a_checkpoint_and_an_export(
    attribution_run, attribution_export, attribution_reference):
  """`generator` and `generator_confidence` in every scored image's JSON: from
  a --workdir checkpoint, `openset.decide` on the checkpoint's logits (the
  evaluation path's); from an exported --model, the decision made inside
  the artifact, the same; through HTTP too; /v1/model shows the fit."""
  from cmfl_jax.attribution import openset
  from cmfl_jax.scoring import decisions
  from cmfl_jax.serving import app as app_lib, limits, model
  ref = attribution_reference
  index, confidence = openset.decide(ref["logits"], ref["fitted"])
  want = openset.names(index, ref["fitted"]["classes"])
  near = np.abs(openset.energy(ref["logits"]) - ref["fitted"]["threshold"]) < 1e-4
  for kind, loaded in (("checkpoint", model.load(attribution_run[0], batch_size=8)),
                       ("export", model.load(model=attribution_export, batch_size=8))):
    answers = loaded.run(ref["pixels"])
    got = [a["generator"] for a in answers]
    assert [g for g, n in zip(got, near) if not n] == [w for w, n in zip(want, near) if not n]
    np.testing.assert_allclose([a["generator_confidence"] for a in answers], confidence,
                               atol=1e-5, err_msg=kind)
    assert all(set(a["heads"]) == {"joint", "rgb", "freq"} for a in answers)
    # One decision path: predict (--workdir, or --model for the export) gives the same verdicts.
    rows = decisions.predict(attribution_run[0] if kind == "checkpoint" else None,
                             ref["paths"],
                             model=attribution_export if kind == "export" else None).rows
    assert [(r["verdict"], r["reason"]) for r in rows] == [
        (a["verdict"], a["reason"]) for a in map(loaded.answer, answers)], kind
    state = app_lib.State(limits.Limits())

    async def body(session, url, loaded=loaded):
      state.ready(loaded)
      async with session.get(url + "/v1/model") as r:
        described = await r.json()
      return described, await _post(session, url, open(ref["paths"][0], "rb").read())

    described, (status, _, answer) = _served(state, body)
    assert status == 200 and answer["generator"] == got[0], answer
    assert answer["generator_confidence"] == pytest.approx(answers[0]["generator_confidence"])
    fit = (described["checkpoint"] if kind == "checkpoint" else described["card"])["attribution"]
    assert "config" not in described.get("card", described) and not _paths_in(described), kind
    assert fit["threshold"] == ref["fitted"]["threshold"]


def test_page_shows_the_generator(tmp_path, monkeypatch):
  """A model with the attribution head (fake): the answers carry the named
  generator or "unknown", and the page lists it among the scores."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.ui import WebDriverWait
  from cmfl_jax.serving import app as app_lib, limits
  driver = _browser(monkeypatch)
  image = tmp_path / "bright.png"
  image.write_bytes(_pixel(200))
  state = app_lib.State(limits.Limits(max_bytes=10_000))

  def upload(url):
    driver.get(url + "/")
    driver.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(driver, 60).until(ec.visibility_of_element_located((By.ID, "verdict")))
    driver.find_element(By.CSS_SELECTOR, "#details summary").click()
    return driver.find_element(By.ID, "scores").text

  async def body(session, url):
    state.ready(_fake_model(0.0, [], classes=("bona_fide", "gan")))
    answers = [(await _post(session, url, _pixel(v)))[2] for v in (200, 10)]
    return answers, await asyncio.get_running_loop().run_in_executor(None, upload, url)

  try:
    (bright, dark), text = _served(state, body)
  finally:
    driver.quit()
  assert (bright["generator"], dark["generator"]) == ("gan", "unknown")
  assert bright["generator_confidence"] == pytest.approx(200 / 255)
  assert "generator" in text and "gan (78.4 %)" in text, text


def test_page_shows_every_face_and_a_plain_error(tmp_path, monkeypatch):
  """Two faces (fake model): both listed with verdict and percent, both boxed
  in their verdict's colour (not the synthetic colour for a real face), the
  second one's numbers a click away; a broken file: one sentence, no result."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  from cmfl_jax.serving import app as app_lib, limits
  driver = _browser(monkeypatch)
  image, broken = tmp_path / "two.png", tmp_path / "notes.png"
  image.write_bytes(_png(np.full((40, 40, 3), 128, np.uint8)))
  broken.write_bytes(b"not an image at all")
  faces = lambda data: [{"box": [2.0, 2.0, 18.0, 18.0], "face_score": 0.99,  # noqa: E731
                         "image": np.full((4, 4, 3), 230, np.uint8)},
                        {"box": [22.0, 22.0, 38.0, 38.0], "face_score": 0.9,
                         "image": np.full((4, 4, 3), 10, np.uint8)}]
  state = app_lib.State(limits.Limits(max_bytes=10_000))

  def upload(url, path):
    driver.get(url + "/")
    driver.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith(
        ("Checked", "Could not")))
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#boxes rect")
                                    or not d.find_element(By.ID, "result").is_displayed())
    items = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#faces li")]
    strokes = [e.get_attribute("stroke") for e in driver.find_elements(By.CSS_SELECTOR,
                                                                        "#boxes rect")]
    first = driver.find_element(By.ID, "verdict").text
    if items:
      driver.find_elements(By.CSS_SELECTOR, "#faces li")[1].click()
    return (items, strokes, first, driver.find_element(By.ID, "verdict").text,
            driver.find_element(By.ID, "status").text,
            driver.find_element(By.ID, "result").is_displayed())

  async def body(session, url):
    state.ready(_fake_model(0.0, [], faces))
    loop = asyncio.get_running_loop()
    return (await loop.run_in_executor(None, upload, url, image),
            await loop.run_in_executor(None, upload, url, broken))

  try:
    two, bad = _served(state, body)
  finally:
    driver.quit()
  items, strokes, first, second, _, shown = two
  assert shown and items == ["Real face, 90.2 %", "Synthetic face, 3.9 %"], items
  assert strokes == ["#2166ac", "#c0392b"]  # real: blue, synthetic: red
  assert (first, second) == ("Face 1: Real face", "Face 2: Synthetic face")
  _, _, _, _, status, shown = bad
  assert not shown and status.startswith("Could not check notes.png: not an image")
  assert "Try another image" in status and "Traceback" not in status
