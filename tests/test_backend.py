"""The entry points' glibc malloc settings (cmfl_jax/backend.py)."""

import os
import subprocess
import sys

import pytest

from cmfl_jax import backend

GLIBC = backend._glibc_version() is not None


def test_tuned_environment_respects_opt_out_and_user_settings():
  assert backend.tuned_environment({backend.OPT_OUT: "0"}) is None
  user = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}
  assert backend.tuned_environment(user) is None


@pytest.mark.skipif(not GLIBC, reason="needs glibc")
def test_tuned_environment_keeps_other_tunables():
  env = backend.tuned_environment({"GLIBC_TUNABLES": "glibc.pthread.rseq=0", "A": "b"})
  assert env["A"] == "b"
  assert env["GLIBC_TUNABLES"].split(":") == ["glibc.pthread.rseq=0", *backend.TUNABLES]


@pytest.mark.skipif(not GLIBC, reason="needs glibc")
def test_reexec_sets_tunables_once_and_keeps_arguments():
  code = ("import os, sys; from cmfl_jax import backend; "
          "print('start', flush=True); backend.reexec_with_tuned_malloc(); "
          "print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", backend.OPT_OUT)}
  out = subprocess.run([sys.executable, "-c", code, "x", "--flag=1"], env=env, check=True,
                       capture_output=True, text=True).stdout.splitlines()
  # Ran twice from the top (re-executed once), then kept the tunables and argv.
  assert out[:2] == ["start", "start"]
  assert out[2] == f"{':'.join(backend.TUNABLES)} ['x', '--flag=1']"
