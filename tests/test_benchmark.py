"""The benchmark harness runs and reports consistent numbers (tiny model)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-m", "cmfl_jax.benchmark",
                         f"--config={ROOT}/configs/smoke.py", "--image_size=32", "--steps=1",
                         "--repeats=1", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]


def test_step_benchmark_against_pytorch():
  pytest.importorskip("torch")
  jax_rec, torch_rec, ratio = run_benchmark("--what=step", "--batch_size=4", "--torch")
  assert jax_rec["impl"] == "cmfl_jax" and torch_rec["impl"] == "pytorch"
  assert jax_rec["batch_size"] == torch_rec["batch_size"] == 4
  for rec in (jax_rec, torch_rec):
    assert rec["train_images_per_sec"] > 0 and rec["eval_images_per_sec"] > 0
  assert jax_rec["train_gflop_per_step"] > jax_rec["eval_gflop_per_step"] > 0
  assert jax_rec["matmul_peak_gflops_per_sec"] > 0 and jax_rec["compile_s"] > 0
  assert ratio["train_speedup_vs_pytorch"] == pytest.approx(
      jax_rec["train_images_per_sec"] / torch_rec["train_images_per_sec"], rel=1e-2)


def test_e2e_benchmark():
  (rec,) = run_benchmark("--what=e2e", "--batch_size=8", "--num_images=16",
                         "--config.model.arch=one_stream", "--config.loss.objective=bce")
  assert rec["e2e_images_per_sec"] > 0 and rec["step_alone_images_per_sec"] > 0
  assert rec["e2e_over_step"] == pytest.approx(
      rec["e2e_images_per_sec"] / rec["step_alone_images_per_sec"], rel=1e-2, abs=1e-3)
