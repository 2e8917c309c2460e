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


#: Image folders for the attribution runs: name -> how its images differ
#: from bona fide 1/f fields (as the toy data's upsampler does).
ATTRIBUTION_GENERATORS = {
    "upsample2": lambda rng, n, s: _field(rng, n, s // 2).repeat(2, 1).repeat(2, 2),
    "stripes": lambda rng, n, s: np.clip(_field(rng, n, s)
                                         + 0.25 * (np.arange(s) % 2)[None, None, :, None], 0, 1),
    "upsample4": lambda rng, n, s: _field(rng, n, s // 4).repeat(4, 1).repeat(4, 2),
}
#: Split -> its generators: two known in training, one unseen (upsample4).
ATTRIBUTION_LAYOUT = {"train": ["upsample2", "stripes"], "dev": ["upsample2", "stripes"],
                      "eval_upsample2": ["upsample2"], "eval_stripes": ["stripes"],
                      "eval_upsample4": ["upsample4"]}
ATTRIBUTION_FLAGS = ("--config.data.source=folder", "--config.data.train_split=train",
                     "--config.data.val_split=dev", "--config.data.verify=none",
                     "--config.data.audit=False", "--config.attribution.enabled=True",
                     "--config.eval.conditions=()")


def _field(rng, n, size):
  from cmfl_jax.data import sources
  return sources._smooth_field(rng, n, size)


def write_attribution_folders(root):
  """`root/<split>/<real|generator>/NNN.png` as ATTRIBUTION_LAYOUT, 32x32."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, gens in ATTRIBUTION_LAYOUT.items():
    n = 32 if split == "train" else 16
    for gen, images in [("real", _field(rng, n, 32)),
                        *[(g, ATTRIBUTION_GENERATORS[g](rng, n, 32)) for g in gens]]:
      folder = os.path.join(root, split, gen)
      os.makedirs(folder, exist_ok=True)
      for i, img in enumerate(images):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(
            os.path.join(folder, f"{i:03d}.png"))


def attribution_outputs(workdir, paths):
  """What checkpoint `best` of `workdir` gives for the image files `paths`,
  through `evaluate.evaluate_split` on a file split (not predict's path):
  {"paths", "pixels", "logits" (attribution head), "joint", "fitted"}."""
  from PIL import Image
  from cmfl_jax.attribution import classes as attribution_classes
  from cmfl_jax.data.split import Files, Split
  from cmfl_jax.evaluation import evaluate
  from cmfl_jax.scoring import model as scoring_model
  config = scoring_model.config_from_checkpoint(workdir, "best")
  state, eval_fn, mesh, meta, _ = evaluate.restore_for_eval(config, workdir, "best")
  split = Split("files", np.zeros(len(paths), np.int32), np.asarray(["x"] * len(paths)),
                Files(np.asarray(paths)))
  out = evaluate.evaluate_split(eval_fn, state, split, mesh, data=config.data,
                                batch_size=config.train.eval_batch_size,
                                classes=attribution_classes.head_classes(config))
  return {"paths": list(paths), "pixels": np.stack([np.asarray(Image.open(p)) for p in paths]),
          "logits": out["source_logits"], "joint": out["scores"]["joint"],
          "fitted": meta["attribution"]}


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
