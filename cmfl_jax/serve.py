"""Serve a trained model over HTTP, with a web page.

  python -m cmfl_jax.serve --workdir=DIR [--checkpoint=best] [--calibration=NAME] [--align]
  python -m cmfl_jax.serve --model=EXPORTED_DIR [--host=127.0.0.1] [--port=8080]

`GET /` the page, `GET /healthz` (503 until the model is compiled),
`GET /v1/model`, `POST /v1/score` (image bytes, or a multipart field
`image`). The socket is bound first, so /healthz answers while the model
loads; the library is `cmfl_jax.serving`.
"""

from __future__ import annotations

import asyncio
import logging as py_logging
import os
import signal
import sys
from typing import Sequence

from cmfl_jax import backend

if __name__ == "__main__":  # before the imports below: they take seconds and would run twice
  backend.reexec_with_tuned_malloc()

# pylint: disable=wrong-import-position
from absl import app, flags, logging

try:
  from aiohttp import web
except ImportError:  # an optional extra: say so in one line
  if __name__ == "__main__":
    sys.exit("error: the service needs aiohttp: pip install 'cmfl_jax[serve]'")
  raise

from cmfl_jax import config as config_lib
from cmfl_jax import verdicts
from cmfl_jax.exporting.errors import ExportError
from cmfl_jax.serving import app as app_lib
from cmfl_jax.serving import limits as limits_lib
from cmfl_jax.serving import model as model_lib
from cmfl_jax.training import checkpointing

FLAGS = flags.FLAGS


async def serve(host: str, port: int, load, state: app_lib.State) -> int:
  """Binds, loads the model (`load()`, in a thread), serves until SIGINT/SIGTERM."""
  runner = web.AppRunner(app_lib.make_app(state), access_log_class=app_lib.AccessLog,
                         access_log=py_logging.getLogger("cmfl_jax.serve.access"))
  await runner.setup()
  try:
    await web.TCPSite(runner, host, port).start()
  except OSError as e:
    print(f"error: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
    await runner.cleanup()
    return 1
  logging.info("listening on http://%s:%d/ (loading the model)", host, port)
  stop = asyncio.Event()
  loop = asyncio.get_running_loop()
  for sig in (signal.SIGINT, signal.SIGTERM):
    loop.add_signal_handler(sig, stop.set)
  try:
    model = await loop.run_in_executor(None, load)
  except (FileNotFoundError, checkpointing.CheckpointError, ImportError, ExportError,
          ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    await runner.cleanup()
    return 1
  state.ready(model)
  _warming = asyncio.ensure_future(state.batcher.call(model.warm_up))  # in the model thread
  logging.info("ready: batch %d, threshold %.4f (%s)", model.batch_size, model.policy.threshold,
               model.policy.source)
  await stop.wait()
  await runner.cleanup()
  return 0


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if (FLAGS.workdir is None) == (FLAGS.model is None):
    raise app.UsageError("give one of --workdir or --model")
  py_logging.getLogger("cmfl_jax.serve").setLevel(py_logging.INFO)
  if FLAGS.compilation_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    import jax
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  align = None
  if FLAGS.align:
    from cmfl_jax.data import aligned_crops
    align = aligned_crops.AlignOptions(FLAGS.align_mode, FLAGS.align_policy, FLAGS.align_size,
                                       max_upscale=FLAGS.max_upscale)
  limits = limits_lib.Limits(FLAGS.max_bytes, FLAGS.max_pixels)
  state = app_lib.State(limits, FLAGS.max_queue, FLAGS.max_wait_ms / 1000,
                        body_timeout=FLAGS.body_timeout_s, max_readers=FLAGS.max_readers,
                        max_buffered=FLAGS.max_buffered_mb * 2**20,
                        decode_pixels=FLAGS.decode_megapixels and FLAGS.decode_megapixels * 10**6)
  load = lambda: model_lib.load(FLAGS.workdir, FLAGS.checkpoint, FLAGS.model,  # noqa: E731
                                FLAGS.calibration, align, limits, FLAGS.batch_size,
                                bool(FLAGS.workdir) if FLAGS.explain is None else FLAGS.explain,
                                FLAGS.stability)
  return asyncio.run(serve(FLAGS.host, FLAGS.port, load, state))


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.")
  flags.DEFINE_string("checkpoint", "best", "best | latest | STEP.")
  flags.DEFINE_string("model", None, "An exported model directory (python -m cmfl_jax.export).")
  flags.DEFINE_string("calibration", None, "Verdict threshold from <workdir>/calibrations/"
                      "NAME.json (or the one an export carries); default: the dev EER threshold.")
  flags.DEFINE_bool("align", False, "Detect and align faces first (MTCNN, as predict --align); "
                    "responses carry each face with its box.")
  flags.DEFINE_enum("align_mode", "align", ["align", "box"], "--align: crop kind.")
  flags.DEFINE_enum("align_policy", "all", ["largest", "most_confident", "all",
                                            "skip_multiple"], "--align: which faces (default: "
                    "every face found, each answered with its box and verdict).")
  flags.DEFINE_float("max_upscale", 2.0, "--align: a face enlarged more than this to the "
                     "model's input is 'unsure' (face too small), as in predict.")
  flags.DEFINE_list("stability", list(verdicts.STABILITY), "As predict's: each image is "
                    "also scored after these; a verdict that changes is 'unsure'. Empty: off.")
  flags.DEFINE_integer("align_size", 224, "--align: crop size before the model's resize.")
  flags.DEFINE_bool("explain", None, "Explanations (signed evidence overlay, frequency pattern "
                    "and profile) for requests that ask (`POST /v1/score?explain=1`; the page "
                    "does). Default: on with --workdir; an export has no gradients' program.")
  flags.DEFINE_string("host", "127.0.0.1", "Interface to bind (default: localhost only).")
  flags.DEFINE_integer("port", 8080, "TCP port.")
  flags.DEFINE_integer("max_queue", 64, "Requests being decoded, queued or scored (taken "
                       "once the body is in) before new ones get 503 + Retry-After.")
  flags.DEFINE_float("body_timeout_s", 30.0, "Deadline for receiving a request body (408 "
                     "beyond): a slow upload is dropped, not waited for.", lower_bound=0.1)
  flags.DEFINE_integer("max_readers", 1024, "Bodies being received at once (503 beyond).",
                       lower_bound=1)
  flags.DEFINE_integer("max_buffered_mb", 512, "Bytes of request bodies held at once, received "
                       "and not yet answered (503 beyond; at least --max_bytes).", lower_bound=1)
  flags.DEFINE_integer("decode_megapixels", None, "Pixels decoded at once across the decode "
                       "threads (memory ~ 15 bytes per pixel); default: twice --max_pixels.",
                       lower_bound=1)
  flags.DEFINE_integer("batch_size", None, "The largest compiled batch (1, 8, 64, ... below "
                       "it are compiled too; a batch is padded to the smallest that holds it); "
                       "default: the config's eval batch size.", lower_bound=1)
  flags.DEFINE_string("compilation_cache", os.path.join(os.path.expanduser("~"), ".cache",
                                                        "cmfl_jax", "xla"),
                      "Persistent XLA compilation cache (as cmfl_jax.main's): a restart "
                      "compiles nothing; '' disables. $JAX_COMPILATION_CACHE_DIR wins.")
  flags.DEFINE_float("max_wait_ms", 5.0, "How long a batch waits for more requests.")
  flags.DEFINE_integer("max_bytes", 20 * 2**20, "Largest request body (413 beyond).")
  flags.DEFINE_integer("max_pixels", 40_000_000, "Largest image, width x height from the "
                       "header (413 beyond; also capped by the config's data.max_pixels).")


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=config_lib.parse_flags)
