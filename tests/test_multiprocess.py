"""Training with several processes (gloo on CPU): preemption of one host,
a peer that dies, exact resume, and where the stop decision is agreed."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from helpers import COMMON, ROOT, SMOKE, main_env, train_log


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def two_processes(workdir, *args, cache_dir, logs: Path):
  """Processes 0 and 1 of one `--mode=train` run (gloo on CPU), each writing
  its output to logs/p<i>.log (files: no pipe can fill and block a process);
  any process still running at the end is killed."""
  port, env = _free_port(), main_env(cache_dir)
  logs.mkdir(parents=True, exist_ok=True)
  procs = []
  try:
    for i in range(2):
      with open(logs / f"p{i}.log", "w") as out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "cmfl_jax.main", f"--config={SMOKE}", f"--workdir={workdir}",
             "--mode=train", *COMMON, f"--coordinator_address=127.0.0.1:{port}",
             "--num_processes=2", f"--process_id={i}", *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True))
    yield procs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def finish(procs, logs: Path, timeout: float = 500) -> list[tuple[int, str]]:
  """(exit status, output) of each process, once all have exited."""
  return [(p.wait(timeout=timeout), (logs / f"p{i}.log").read_text())
          for i, p in enumerate(procs)]


def _validation_lines(log: str) -> list[str]:
  return re.findall(r"step \d+: val_loss=.*", log)


#: Messages of the two ways a survivor learns that its peer died: a failed
#: collective (the peer's sockets closed: at once), or jax.distributed's
#: heartbeat timeout (a peer that vanished without closing them).
PEER_DIED = ("error: a collective operation failed",
             "Terminating process because the JAX distributed service detected fatal errors")


def test_two_processes_preemption_then_peer_failure_then_exact_resume(reference_run, tmp_path,
                                                                      cache_dir):
  """One two-process run through both failures (one run per phase keeps the
  suite short):
  1. SIGTERM reaches process 1 only (one preempted host) after step 5: both
     agree at the next save boundary (step 6, checkpoint_every_steps=3), save
     it once together and exit 143.
  2. The rerun resumes at 6; SIGKILL of process 1 after step 10: process 0
     exits with an error within the heartbeat timeout (not a hang).
  3. The rerun resumes from the last complete checkpoint and ends as an
     uninterrupted single-process run does (two-process training, its
     checkpoints and exact resume in one)."""
  from cmfl_jax.training import checkpointing
  ref_dir, _ = reference_run
  workdir, logs, heartbeat = str(tmp_path / "run"), tmp_path / "logs", 10
  latest = os.path.join(workdir, "checkpoints", "latest")
  with two_processes(workdir, "--config.train.debug_signal_at_step=5",
                     "--config.train.debug_signal_process=1", cache_dir=cache_dir,
                     logs=logs) as procs:
    (code0, log0), (code1, log1) = finish(procs, logs)
  assert code0 == code1 == 143, log0[-3000:] + log1[-3000:]
  assert "process 1 of 2" in log1 and "1 local / 2 global devices" in log0
  assert "received signal 15" in log1 and "received signal" not in log0
  for log in (log0, log1):
    assert "stop requested by process(es) [1]" in log
    assert "stopped by signal 15 at step 6" in log
  assert sorted(os.listdir(latest)) == ["4", "6"]  # nothing half-written beside them
  assert checkpointing.read_meta(checkpointing.make_managers(workdir)["latest"], 6)["step"] == 6
  # Keep-best is decided on each process from the global validation loss: the same.
  assert _validation_lines(log0) == _validation_lines(log1) != []

  with two_processes(workdir, "--config.train.debug_signal_at_step=10",
                     f"--config.train.debug_signal={int(signal.SIGKILL)}",
                     "--config.train.debug_signal_process=1",
                     f"--heartbeat_timeout_seconds={heartbeat}", cache_dir=cache_dir,
                     logs=logs) as procs:
    assert procs[1].wait(timeout=500) == -signal.SIGKILL
    died = time.monotonic()
    code0 = procs[0].wait(timeout=heartbeat + 30)  # a hang raises TimeoutExpired
    waited = time.monotonic() - died
  log0 = (logs / "p0.log").read_text()
  assert "resumed from latest step 6" in log0
  assert code0 != 0 and any(m in log0 for m in PEER_DIED), log0[-3000:]
  assert waited < heartbeat + 30
  complete = sorted(int(d) for d in os.listdir(latest) if d.isdigit())
  assert max(complete) in (8, 9)  # the epoch end or the periodic save before the kill

  with two_processes(workdir, cache_dir=cache_dir, logs=logs) as procs:
    results = finish(procs, logs)
  assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
  assert all(f"resumed from latest step {max(complete)}" in log for _, log in results)
  losses = {l["step"]: l["train/loss"] for l in train_log(workdir)}  # the last run's win
  assert sorted(losses) == list(range(1, 13))
  np.testing.assert_allclose([losses[s] for s in range(1, 13)],
                             [l["train/loss"] for l in train_log(ref_dir)], rtol=1e-4)


def test_stop_is_agreed_every_n_steps_and_at_boundaries_only_with_several_processes(
    monkeypatch):
  """Where `_StopSignals.agreed` runs the collective: never with one process
  (its own flag decides at once), else every stop_check_every_steps steps and
  at every save/epoch boundary; all processes make the same calls."""
  from cmfl_jax.training import loop as train
  calls = []
  monkeypatch.setattr(train, "_agree", lambda received: calls.append(received) or received)
  signals = train._StopSignals(check_every=4)
  signals.received = signal.SIGINT
  assert signals.agreed(1, boundary=False) == signal.SIGINT and calls == []
  monkeypatch.setattr(train.jax, "process_count", lambda: 2)
  decided = [s for s in range(1, 10) if signals.agreed(s, boundary=s == 3)]
  assert decided == [3, 4, 8] and calls == [signal.SIGINT] * 3
  assert train.Interrupted(signal.SIGINT, 3).exit_status == 130
  assert train.Interrupted(signal.SIGTERM, 3).exit_status == 143
