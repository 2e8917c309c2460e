"""The benchmark harness runs and reports consistent numbers (tiny model)."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-m", "cmfl_jax.bench",
                         f"--config={ROOT}/configs/smoke.py", "--config.data.image_size=32",
                         "--steps=1",
                         *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]


def test_step_benchmark_against_pytorch_and_a_baseline_variant():
  """One run times three step runners in alternating rounds: cmfl_jax, a
  baseline variant of it (another `model.cpu_matmul`) and, where torch is
  installed, the official model in PyTorch."""
  has_torch = importlib.util.find_spec("torch") is not None
  recs = run_benchmark("--what=step", "--config.train.batch_size=4", "--repeats=2",
                       f"--baseline={ROOT}/configs/smoke.py",
                       "--baseline.model.cpu_matmul=ynnpack", *(["--torch"] if has_torch else []))
  steps_ = [r for r in recs if r["what"] == "step"]
  ratios = [r for r in recs if r["what"] != "step"]
  assert len(steps_) == len(ratios) + 1 == (3 if has_torch else 2)
  mine, base = steps_[:2]
  assert mine["impl"] == "cmfl_jax" and mine["batch_size"] == 4
  assert mine["ops"] == "gemm" and mine["device_peak_mib"] is None  # CPU
  for rec in steps_:
    assert rec["train_images_per_sec"] > 0 and rec["eval_images_per_sec"] > 0
    # Reported throughput is the median of the alternating repeats.
    assert len(rec["train_s_per_repeat"]) == len(rec["eval_s_per_repeat"]) == 2
    assert rec["train_images_per_sec"] == pytest.approx(
        4 / np.median(rec["train_s_per_repeat"]), rel=2e-2)
  assert mine["train_gflop_per_step"] > mine["eval_gflop_per_step"] > 0
  assert mine["matmul_peak_gflops_per_sec"] > 0 and mine["compile_s"] > 0
  assert mine["train_mfu"] == pytest.approx(
      mine["train_gflops_per_sec"] / mine["matmul_peak_gflops_per_sec"], rel=2e-2)
  # The baseline variant, timed in the same rounds.
  assert mine["cpu_matmul"] == "eigen" and base["cpu_matmul"] == "ynnpack"
  assert base["baseline"] == ratios[0]["baseline"] == ["model.cpu_matmul=ynnpack"]
  assert ratios[0]["eval_speedup_vs_baseline"] == pytest.approx(
      mine["eval_images_per_sec"] / base["eval_images_per_sec"], rel=1e-2)
  assert len(ratios[0]["train_speedup_per_repeat"]) == 2
  if not has_torch:
    pytest.skip("torch not installed: the PyTorch half was not run")
  torch_rec, ratio = steps_[2], ratios[1]
  assert torch_rec["impl"] == "pytorch" and torch_rec["batch_size"] == 4
  assert ratio["train_speedup_vs_pytorch"] == pytest.approx(
      mine["train_images_per_sec"] / torch_rec["train_images_per_sec"], rel=1e-2)
  assert len(ratio["train_speedup_per_repeat"]) == 2
  assert ratio["eval_speedup_per_repeat"][0] == pytest.approx(
      torch_rec["eval_s_per_repeat"][0] / mine["eval_s_per_repeat"][0], rel=2e-2)


def test_e2e_benchmark():
  (rec,) = run_benchmark("--what=e2e", "--repeats=1", "--config.train.batch_size=8", "--num_images=16",
                         "--config.model.arch=one_stream", "--config.loss.objective=bce")
  assert rec["e2e_images_per_sec"] > 0 and rec["step_alone_images_per_sec"] > 0
  assert rec["e2e_over_step"] == pytest.approx(
      rec["e2e_images_per_sec"] / rec["step_alone_images_per_sec"], rel=1e-2, abs=1e-3)
  assert len(rec["e2e_over_step_per_round"]) == 1 and rec["e2e_over_step_per_round"][0] > 0


def test_flops_count_without_compiling():
  """In-process (the command line is exercised by the other benchmark tests)."""
  import runpy

  from cmfl_jax.bench import step
  recs = {}
  for batch in (4, 8):
    config = runpy.run_path(f"{ROOT}/configs/smoke.py")["get_config"]()
    config.data.image_size, config.model.ops, config.train.batch_size = 32, "xla", batch
    recs[batch] = step.step_flops(config)
  rec, rec8 = recs[4], recs[8]
  assert rec["ops"] == "xla" and rec["train_gflop_per_step"] > rec["eval_gflop_per_step"] > 0
  # Work scales with the batch (the optimizer update does not, hence approx).
  assert rec8["eval_gflop_per_step"] == pytest.approx(2 * rec["eval_gflop_per_step"], rel=0.05)
