"""Entry point: flags and config, distributed setup, hand-off to the library.

  python -m cmfl_jax.main --config=configs/cross_model.py [--workdir=DIR]
      [--mode=train|eval|train_and_eval] [--config.train.batch_size=64 ...]

A config with a `sweep` field (configs/paper_table.py) runs every cell of the
sweep and writes one combined report (cmfl_jax/evaluation/sweep.py).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from cmfl_jax import backend
from cmfl_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Run directory (checkpoints, TensorBoard, reports). Default: "
                               "./runs/<config name>.")
_MODE = flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"],
                          "train; eval (reload a checkpoint); or both.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "For eval: best | latest | STEP (default: config.eval.checkpoint).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_COLLECTIVES = flags.DEFINE_string("cpu_collectives", "gloo",
                                       "Collectives for multi-process CPU runs.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 60,
    "Multi-process runs: the bound on waiting for a dead peer. A peer whose process died "
    "fails the next collective (the others exit 1 at once); one silent this long (host lost, "
    "process frozen) is declared dead by jax.distributed and the others abort. Rerun to "
    "resume from the last complete checkpoint.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.join(os.path.expanduser("~"), ".cache", "cmfl_jax", "xla"),
    "Persistent XLA compilation cache (reruns, eval, resumes and sweep cells with the same "
    "model skip minutes of compilation on CPU); '' disables. $JAX_COMPILATION_CACHE_DIR wins.")
flags.mark_flags_as_required(["config"])


class _QuietLibraries:
  """Drops INFO chatter from Orbax/TF (a dozen lines per checkpoint)."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or not any(
        part in record.pathname for part in ("orbax", "tensorflow", "etils"))


def _init_distributed() -> None:
  """jax.distributed for explicit flags, or auto-detected on TPU pods / SLURM."""
  import jax
  explicit = _COORDINATOR.value is not None
  auto = any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID",
                                       "MEGASCALE_COORDINATOR_ADDRESS"))
  if not (explicit or auto):
    return
  timeouts = {"heartbeat_timeout_seconds": _HEARTBEAT.value}
  if explicit:
    jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               **timeouts)
  else:
    jax.distributed.initialize(**timeouts)


def _exit_after_failed_collective(error: Exception) -> NoReturn:
  """Several processes and a collective failed, almost always because a peer
  died: one clear line and out at once. A normal exit would first wait in
  jax.distributed's shutdown barrier for the dead peer until its heartbeat
  timeout, then abort with a fatal log."""
  first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
  message = (f"a collective operation failed ({first}): another process has most likely died "
             "or been stopped, see its log. Rerun the same command on every process to resume "
             "from the last complete checkpoint.")
  logging.error("%s", message)
  print(f"error: {message}", file=sys.stderr)
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # tf.data only: keep TensorFlow off the accelerators JAX owns.
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")

  logging.get_absl_handler().addFilter(_QuietLibraries())
  _init_distributed()
  import jax
  if _CACHE.value and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", _CACHE.value)
  from cmfl_jax.evaluation import evaluate, report, sweep
  from cmfl_jax.training import checkpointing, loop as train

  config = _CONFIG.value
  try:  # every setting checked before any data is read or anything compiled
    for _, cell in (sweep.cells(config) if "sweep" in config else [("", config)]):
      config_lib.validate(cell, jax.device_count())
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return config_lib.USAGE_ERROR
  config_name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  workdir = _WORKDIR.value or os.path.join("runs", config_name)
  logging.info("JAX %s, backend %s: process %d of %d, %d local / %d global devices: %s",
               jax.__version__, jax.default_backend(), jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices())
  logging.info("workdir %s\n%s", workdir, config)
  try:
    if "sweep" in config:
      sweep.run_sweep(config, workdir, _MODE.value)
      if _MODE.value != "train":
        print(f"sweep report: {os.path.join(workdir, 'report.md')}")
      return 0
    if _MODE.value in ("train", "train_and_eval"):
      summary = train.train_and_evaluate(config, workdir)
      logging.info("training done: %d steps, best val loss %.5f", summary["steps"],
                   summary["best_val_loss"])
    if _MODE.value in ("eval", "train_and_eval"):
      results = evaluate.evaluate_checkpoint(config, workdir, _CHECKPOINT.value)
      print("\n".join(report.summary_lines(results)))
  except train.Interrupted as e:
    logging.warning("%s", e)
    return e.exit_status
  except (train.NonFiniteLossError, checkpointing.CheckpointError, FileNotFoundError,
          ValueError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    return 1
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    _exit_after_failed_collective(e)
  return 0


if __name__ == "__main__":
  backend.reexec_with_tuned_malloc()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=config_lib.parse_flags)
