"""Shared test helpers: running `python -m cmfl_jax.main` as a user does
(configs/smoke.py, the shared XLA compilation cache), and reading its outputs.
The session fixtures built on them (`cache_dir`, `reference_run`) are in conftest.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.py")
# 3 epochs x 4 steps, periodic checkpoints every 3 steps.
COMMON = ["--config.train.num_epochs=3", "--config.train.log_every_steps=1"]
GUARD = ROOT / "tests" / "fixtures" / "workdir_guard.py"


def main_env(cache_dir, devices=1):
  """The environment of every `cmfl_jax.main` subprocess: CPU, `devices`
  simulated devices, the shared compilation cache."""
  return {**os.environ,
          "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
          "JAX_COMPILATION_CACHE_DIR": cache_dir, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def run_main(workdir, *args, cache_dir, devices=1, extra_env=None, check=True, timeout=400,
             guard_log=None):
  """`python -m cmfl_jax.main`; with `guard_log`, under tests/fixtures/workdir_guard.py."""
  env = {**main_env(cache_dir, devices), **(extra_env or {})}
  flags = [f"--config={SMOKE}", *COMMON, *args]
  cmd = ([sys.executable, str(GUARD), guard_log, workdir, "--", *flags] if guard_log else
         [sys.executable, "-m", "cmfl_jax.main", f"--workdir={workdir}", *flags])
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
  return proc


def train_log(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, "train_log.jsonl"))]
  return [l for l in lines if "train/loss" in l]


def restore_latest(workdir):
  """Final raw arrays of the latest checkpoint, read back with Orbax."""
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "checkpoints", "latest")
  mngr = ocp.CheckpointManager(path, item_names=("state", "meta"))
  step = mngr.latest_step()
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                   meta=ocp.args.JsonRestore()))
  import jax
  leaves = jax.tree_util.tree_flatten_with_path(out["state"])[0]
  return step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}, dict(out["meta"])


def attribution_outputs(workdir, folder):
  """The smoke config's eval images saved as PNGs in `folder`, scored by
  checkpoint `best` of `workdir` through `evaluate.evaluate_split` on a file
  split: {"paths", "pixels", "logits" (attribution head), "joint", "fitted"}."""
  import runpy
  from PIL import Image
  from cmfl_jax import evaluate, predict
  from cmfl_jax.data import sources
  from cmfl_jax.data.split import Files, Split
  config = runpy.run_path(SMOKE)["get_config"]()
  pixels = sources.load_splits(config.data, ["eval"])[0]["eval"].images
  paths = [os.path.join(folder, f"{i:02d}.png") for i in range(len(pixels))]
  for path, image in zip(paths, pixels):
    Image.fromarray(image).save(path)
  config = predict.config_from_checkpoint(workdir, "best")
  state, eval_fn, mesh, meta, _ = evaluate.restore_for_eval(config, workdir, "best")
  split = Split("files", np.zeros(len(paths), np.int32), np.asarray(["x"] * len(paths)),
                Files(np.asarray(paths)))
  out = evaluate.evaluate_split(eval_fn, state, split, config, mesh)
  return {"paths": paths, "pixels": np.stack(pixels), "logits": out["source_logits"],
          "joint": out["scores"]["joint"], "fitted": meta["attribution"]}


def energy_cut(logits):
  """An open-set threshold splitting the images' energies near the middle, in
  the widest gap there: some images come out "unknown", some named, and none
  lies within float32 rounding of the cut."""
  from cmfl_jax.attribution import openset
  energies = np.sort(openset.energy(logits))
  n = len(energies)
  k = max(range(n // 4, 3 * n // 4 + 1), key=lambda i: energies[i] - energies[i - 1])
  assert energies[k] - energies[k - 1] > 1e-4, energies
  return float((energies[k - 1] + energies[k]) / 2)
