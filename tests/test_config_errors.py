"""Command-line mistakes: one line, exit 2, no traceback."""

import os
import subprocess
import sys

import pytest

from helpers import ROOT, SMOKE, run_main


@pytest.mark.parametrize("args, names", [
    (["--config=configs/nope.py"], ["nope.py"]),
    (["--config.model.arhc=one_stream"], ["arhc", "arch"]),
    (["--config.train.batch_size=abc"], ["batch_size"]),
    (["--config.model.arch=foo"], ["model.arch", "two_stream"]),
    (["--config.data.image_size=4"], ["data.image_size", "minimum"]),
])
def test_main_config_errors_are_one_line(tmp_path, args, names, cache_dir):
  if args[0].startswith("--config="):
    cmd = [sys.executable, "-m", "cmfl_jax.main", *args, f"--workdir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  else:
    proc = run_main(str(tmp_path), *args, cache_dir=cache_dir, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  (line,) = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert all(n in line for n in names), line


def test_validate_names_the_key_and_the_choices():
  import runpy

  from cmfl_jax import config as config_lib
  for key, value, names in [("data.source", "bar", ["data.source", "csv"]),
                            ("loss.objective", "baz", ["loss.objective", "cmfl"]),
                            ("model.ops", "cudnn", ["model.ops", "gemm"]),
                            ("data.balance", "x", ["data.balance", "oversample"]),
                            ("train.batch_size", 6, ["train.batch_size", "4 devices"]),
                            ("eval.unsure_error", 1.5, ["eval.unsure_error", "[0, 1)"])]:
    config = runpy.run_path(SMOKE)["get_config"]()
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.validate(config, num_devices=4)
    assert all(n in str(e.value) for n in names), str(e.value)
  config_lib.validate(runpy.run_path(SMOKE)["get_config"](), num_devices=4)  # the smoke run is fine
