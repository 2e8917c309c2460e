"""What an export costs and what it gives: export time, artifact sizes, load
time and images/s of each artifact against in-process scoring (predict's
path: the checkpoint and the compiled eval step), and whether TFLite converts
it. Prints one JSON line per measurement and writes them to OUT/costs.json.

  python benchmarks/export_cost.py --workdir=RUN --out=DIR [--batches=4] [--repeats=3]

RUN is a trained workdir (random weights are fine for costs). Each scorer runs
in a fresh subprocess (`--worker=KIND`), so load times include nothing cached
in this process; the batch is the run's `train.eval_batch_size`, images are
random uint8. import_s: the framework's import; load_s: reading the model
(in_process: restoring the checkpoint and compiling the eval step). images/s: median over repeats of `batches` batches, after a
first (compiling) call, whose time is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("in_process", "jax_exported", "saved_model")
#: What each kind imports (timed apart from loading the model).
IMPORTS = {"in_process": "cmfl_jax.scoring.model", "jax_exported": "jax.export",
           "saved_model": "tensorflow"}


def _scorer(kind: str, workdir: str, export_dir: str):
  """(batch function, batch size, image size) of one kind; imports timed by the caller."""
  if kind == "in_process":
    from cmfl_jax.scoring import model as scoring_model
    model = scoring_model.load_model(workdir, "best")
    return model.score, model.config.train.eval_batch_size, model.config.data.image_size
  card = json.load(open(os.path.join(export_dir, "model_card.json")))
  size, batch = card["input"]["size"], card["config"]["train"]["eval_batch_size"]
  if kind == "jax_exported":
    import jax
    from jax import export
    with open(os.path.join(export_dir, "model.jax_exported"), "rb") as f:
      exported = export.deserialize(bytearray(f.read()))
    return lambda x: jax.block_until_ready(exported.call(x)["p_real"]), batch, size
  import tensorflow as tf
  fn = tf.saved_model.load(os.path.join(export_dir, "saved_model")).signatures["serving_default"]
  return lambda x: fn(images=tf.constant(x))["p_real"].numpy(), batch, size


def worker(kind: str, workdir: str, export_dir: str, batches: int, repeats: int) -> dict:
  import importlib
  start = time.perf_counter()
  importlib.import_module(IMPORTS[kind])
  import_s = time.perf_counter() - start
  start = time.perf_counter()
  score, batch, size = _scorer(kind, workdir, export_dir)
  load_s = time.perf_counter() - start
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  start = time.perf_counter()
  score(images)
  first_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(batches):
      score(images)
    times.append(time.perf_counter() - start)
  return {"kind": kind, "import_s": round(import_s, 2), "load_s": round(load_s, 2), "first_call_s": round(first_s, 2),
          "batch": batch, "images_per_sec": round(batch * batches / statistics.median(times), 1)}


def tflite_attempt(export_dir: str) -> dict:
  """Converts the SavedModel with TFLite builtins + select TF ops; the ops it rejects."""
  import re
  import tensorflow as tf
  converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(export_dir, "saved_model"))
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                         tf.lite.OpsSet.SELECT_TF_OPS]
  try:
    converted = converter.convert()
  except Exception as e:  # noqa: BLE001 - the converter's error is the finding
    rejected = sorted(set(re.findall(r"'(vhlo\.\w+)' op is not part of the vhlo support", str(e))))
    return {"kind": "tflite", "converted": False, "rejected_ops": rejected}
  return {"kind": "tflite", "converted": True, "bytes": len(converted)}


def _run_json(args: list[str], env: dict) -> dict:
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True)
  if proc.returncode != 0:
    raise SystemExit(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--batches", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--worker", choices=(*KINDS, "tflite"))
  args = parser.parse_args()
  export_dir = os.path.join(args.out, "export")
  if args.worker == "tflite":
    print(json.dumps(tflite_attempt(export_dir)))
    return
  if args.worker:
    print(json.dumps(worker(args.worker, args.workdir, export_dir, args.batches, args.repeats)))
    return
  env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
  records = [{"kind": "machine", "load_average": os.getloadavg(), "cpus": os.cpu_count()}]
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "cmfl_jax.export", f"--workdir={args.workdir}",
                         f"--output={export_dir}", "--overwrite"], cwd=ROOT, env=env,
                        capture_output=True, text=True)
  if proc.returncode != 0:
    raise SystemExit(proc.stderr[-3000:])
  card = json.load(open(os.path.join(export_dir, "model_card.json")))
  ckpt = os.path.join(args.workdir, "checkpoints", card["checkpoint"]["kind"],
                      str(card["checkpoint"]["step"]), "state")
  records.append({"kind": "export", "seconds": round(time.perf_counter() - start, 1),
                  "parameters": card["architecture"]["parameters"],
                  "image_size": card["input"]["size"],
                  "saved_model_bytes": card["artifacts"]["saved_model"]["bytes"],
                  "jax_exported_bytes": card["artifacts"]["model.jax_exported"]["bytes"],
                  "checkpoint_state_bytes": sum(os.path.getsize(os.path.join(d, f))
                                                for d, _, fs in os.walk(ckpt) for f in fs)})
  print(json.dumps(records[-1]), flush=True)
  common = [__file__, f"--workdir={args.workdir}", f"--out={args.out}",
            f"--batches={args.batches}", f"--repeats={args.repeats}"]
  for kind in (*KINDS, "tflite"):
    records.append(_run_json([*common, f"--worker={kind}"], env))
    print(json.dumps(records[-1]), flush=True)
  records.append({"kind": "machine_after", "load_average": os.getloadavg()})
  with open(os.path.join(args.out, "costs.json"), "w") as f:
    json.dump(records, f, indent=2)


if __name__ == "__main__":
  main()
