"""Tests for the cluster launch scripts in launch/.

Every script runs with --dry-run under a hermetic PATH: a directory holding
only the few tools the scripts need, plus stand-ins for gcloud, srun, sbatch
and scontrol that record any call. No network, no cloud, no SLURM.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_DIR = REPO_ROOT / "launch"
TPU_VM = LAUNCH_DIR / "tpu_vm.sh"
SLURM_GPU = LAUNCH_DIR / "slurm_gpu.sbatch"
SCRIPTS = (TPU_VM, SLURM_GPU)

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")

# Tools the scripts (and the simulated remote commands) use.
_TOOLS = ("bash", "cat", "dirname", "basename", "env", "nohup")
_CLUSTER_TOOLS = ("gcloud", "srun", "sbatch", "scontrol")


class Sandbox:
    """A hermetic environment: PATH without any real cluster tool."""

    def __init__(self, root: Path, stubs: tuple[str, ...] = ("gcloud", "srun", "sbatch")):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        self.home = root / "home"
        self.home.mkdir()
        self.calls = root / "calls.log"
        for tool in _TOOLS:
            found = shutil.which(tool)
            if found is None:
                pytest.skip(f"{tool} is not installed")
            (self.bin / tool).symlink_to(found)
        for tool in stubs:
            self.add_stub(tool)

    def add_stub(self, name: str, body: str = "") -> None:
        """A stand-in that records its arguments, one per line, then runs body."""
        stub = self.bin / name
        stub.write_text(
            f"#!{BASH}\n"
            f'printf "CALL %s\\n" "$0" >> "{self.calls}"\n'
            f'for a in "$@"; do printf "%s\\n" "$a" >> "{self.calls}"; done\n'
            f"{body}\n"
        )
        stub.chmod(0o755)

    def env(self, **extra: str) -> dict[str, str]:
        env = {"PATH": str(self.bin), "HOME": str(self.home), "LC_ALL": "C"}
        env.update(extra)
        return env

    def run(self, script: Path, *args: str, check_rc: int | None = 0, **extra_env: str):
        proc = subprocess.run(
            [BASH, str(script), *args],
            env=self.env(**extra_env),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check_rc is not None:
            assert proc.returncode == check_rc, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    def called(self) -> str:
        return self.calls.read_text() if self.calls.exists() else ""


@pytest.fixture
def sandbox(tmp_path):
    box = Sandbox(tmp_path)
    yield box
    # --dry-run must never reach gcloud / srun / sbatch / scontrol.
    assert box.called() == "", f"a cluster tool was called:\n{box.called()}"


def commands(stdout: str) -> list[list[str]]:
    """The printed '+ ' lines of a dry run, split like a shell would."""
    lines = stdout.splitlines()
    assert lines, "dry run printed no command"
    for line in lines:
        assert line.startswith("+ "), f"not a '+ ' command line: {line!r}"
    return [shlex.split(line[2:]) for line in lines]


def option_value(argv: list[str], name: str) -> str:
    """The value of '--name value' or '--name=value' in argv."""
    for i, word in enumerate(argv):
        if word == name:
            return argv[i + 1]
        if word.startswith(name + "="):
            return word[len(name) + 1 :]
    raise AssertionError(f"{name} not in {argv}")


def write_fake_python(path: Path) -> None:
    """An interpreter stand-in that prints its cwd and arguments, then END."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!{BASH}\npwd\nfor a in "$@"; do printf "<%s>\\n" "$a"; done\necho END\n')
    path.chmod(0o755)


# ----------------------------------------------------------------- general --


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_header(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK), f"{script} is not executable"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_exits_zero(sandbox, script):
    for flag in ("--help", "-h"):
        proc = sandbox.run(script, flag)
        assert "Usage:" in proc.stdout
        assert "--dry-run" in proc.stdout
        assert proc.stderr == ""


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    files = sorted(LAUNCH_DIR.glob("*.sh")) + sorted(LAUNCH_DIR.glob("*.sbatch"))
    assert {TPU_VM, SLURM_GPU} <= set(files)
    proc = subprocess.run(
        [shellcheck, *map(str, files)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------- tpu_vm.sh --


def test_tpu_help_lists_commands_and_settings(sandbox):
    out = sandbox.run(TPU_VM, "help").stdout
    for word in ("create", "setup", "run", "logs", "stop", "delete"):
        assert f"\n  {word} " in out
    for var in ("TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "TPU_VERSION", "PROJECT", "CONFIG", "WORKDIR"):
        assert var in out
    assert sandbox.run(TPU_VM, "run", "--help").stdout == out


def test_tpu_unknown_subcommand_fails(sandbox):
    proc = sandbox.run(TPU_VM, "frobnicate", "--dry-run", check_rc=None)
    assert proc.returncode != 0
    assert "unknown command 'frobnicate'" in proc.stderr
    assert proc.stdout == ""


def test_tpu_missing_subcommand_fails(sandbox):
    proc = sandbox.run(TPU_VM, "--dry-run", check_rc=None)
    assert proc.returncode != 0
    assert "missing command" in proc.stderr
    assert "Usage:" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["create", "--dry-run", "--bogus"], "unknown option '--bogus'"),
        (["create", "--dry-run", "--zone"], "needs a value"),
        (["create", "run", "--dry-run"], "unexpected argument 'run'"),
        (["create", "--dry-run", "--", "--config.x=1"], "only accepted by 'run'"),
        (["create", "--dry-run", "--spot", "--preemptible"], "mutually exclusive"),
        (["logs", "--dry-run", "--worker", "all"], "--worker must be a worker index"),
    ],
)
def test_tpu_bad_usage_fails(sandbox, args, message):
    proc = sandbox.run(TPU_VM, *args, check_rc=None)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert proc.stdout == ""


def test_tpu_create_defaults(sandbox):
    (cmd,) = commands(sandbox.run(TPU_VM, "create", "--dry-run").stdout)
    assert cmd == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "cmfl-tpu",
        "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
        "--zone=us-central2-b",
    ]  # fmt: skip


def test_tpu_create_flags(sandbox):
    proc = sandbox.run(
        TPU_VM, "create", "--dry-run", "--name", "my-tpu", "--zone=europe-west4-a",
        "--accelerator-type", "v5litepod-16", "--version", "v2-alpha-tpuv5-lite",
        "--project", "my-proj", "--spot",
    )  # fmt: skip
    (cmd,) = commands(proc.stdout)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu"]
    assert option_value(cmd, "--zone") == "europe-west4-a"
    assert option_value(cmd, "--accelerator-type") == "v5litepod-16"
    assert option_value(cmd, "--version") == "v2-alpha-tpuv5-lite"
    assert option_value(cmd, "--project") == "my-proj"
    assert "--spot" in cmd and "--preemptible" not in cmd


def test_tpu_create_env_vars(sandbox):
    proc = sandbox.run(
        TPU_VM, "create", "--dry-run",
        TPU_NAME="env-tpu", ZONE="us-east1-d", ACCELERATOR_TYPE="v6e-8",
        TPU_VERSION="v2-alpha-tpuv6e", PROJECT="env-proj", PREEMPTIBLE="1",
    )  # fmt: skip
    (cmd,) = commands(proc.stdout)
    assert cmd[5] == "env-tpu"
    assert option_value(cmd, "--zone") == "us-east1-d"
    assert option_value(cmd, "--accelerator-type") == "v6e-8"
    assert option_value(cmd, "--version") == "v2-alpha-tpuv6e"
    assert option_value(cmd, "--project") == "env-proj"
    assert "--preemptible" in cmd and "--spot" not in cmd
    # Flags win over the environment.
    (cmd,) = commands(
        sandbox.run(TPU_VM, "create", "-n", "--zone", "flag-zone", ZONE="env-zone").stdout
    )
    assert option_value(cmd, "--zone") == "flag-zone"


def test_tpu_setup_copies_to_all_workers_and_installs(sandbox):
    proc = sandbox.run(TPU_VM, "setup", "--dry-run", "--name", "my-tpu", "--zone", "z1")
    prep, scp, install = commands(proc.stdout)
    for cmd in (prep, scp, install):
        assert cmd[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]
        assert "my-tpu" in " ".join(cmd)
        assert "--worker=all" in cmd
        assert option_value(cmd, "--zone") == "z1"
    assert prep[4] == "ssh" and "mkdir -p cmfl_jax" in option_value(prep, "--command")
    assert scp[4] == "scp" and "--recurse" in scp
    assert str(REPO_ROOT / "pyproject.toml") in scp
    assert str(REPO_ROOT / "cmfl_jax") in scp
    assert "my-tpu:cmfl_jax/" in scp
    assert install[4] == "ssh"
    remote = option_value(install, "--command")
    assert "python3.11 -m venv" in remote
    assert "pip install -e . 'jax[tpu]'" in remote
    assert remote.index("apt-get") < remote.index("-m venv") < remote.index("pip install -e")


def test_tpu_setup_without_venv_or_apt(sandbox):
    proc = sandbox.run(
        TPU_VM, "setup", "-n", "--venv=", "--apt-packages=", "--python", "python3",
        "--jax-package", "jax[tpu]==0.7.2",
    )  # fmt: skip
    remote = option_value(commands(proc.stdout)[-1], "--command")
    assert remote == (
        "cd cmfl_jax && python3 -m pip install --upgrade pip"
        " && python3 -m pip install -e . 'jax[tpu]==0.7.2'"
    )


def test_tpu_run_dry_run(sandbox):
    proc = sandbox.run(
        TPU_VM, "run", "--dry-run", "--name", "my-tpu", "--zone", "z1",
        "--workdir", "gs://my-bucket/cmfl/run1", "--mode", "train_and_eval",
        "--", "--config.train.num_epochs=3", "--config.data.name=it's a test",
    )  # fmt: skip
    (cmd,) = commands(proc.stdout)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert "--worker=all" in cmd
    remote = option_value(cmd, "--command")
    assert "nohup" in remote and remote.endswith("&")
    assert "-m cmfl_jax.main" in remote
    assert "--config=configs/cross_model.py" in remote
    assert "--workdir=gs://my-bucket/cmfl/run1" in remote
    assert "--mode=train_and_eval" in remote
    assert "--config.train.num_epochs=3" in remote
    assert "> cmfl_jax.log 2>&1" in remote


def test_tpu_run_defaults_and_env(sandbox):
    proc = sandbox.run(TPU_VM, "run", "-n", CONFIG="configs/other.py", TPU_NAME="t2")
    remote = option_value(commands(proc.stdout)[0], "--command")
    assert "--config=configs/other.py" in remote
    assert "--workdir=runs/t2" in remote
    assert "--mode" not in remote
    assert "gs://" in proc.stderr  # advice to use a shared workdir


def test_tpu_run_remote_command_works(sandbox):
    """Execute the printed remote command locally against a fake venv python."""
    extra = ["--config.train.num_epochs=3", "--config.data.name=it's a \"test\" $HOME"]
    proc = sandbox.run(
        TPU_VM, "run", "-n", "--workdir", "gs://b/run 1", "--log-file", "logs.txt", "--", *extra
    )
    remote = option_value(commands(proc.stdout)[0], "--command")
    (sandbox.home / "cmfl_jax").mkdir()
    write_fake_python(sandbox.home / "cmfl_venv" / "bin" / "python")
    subprocess.run(
        [BASH, "-c", remote], env=sandbox.env(), cwd=sandbox.home, check=True, timeout=30
    )
    log = sandbox.home / "logs.txt"
    deadline = time.monotonic() + 20
    while not (log.exists() and log.read_text().rstrip().endswith("END")):
        assert time.monotonic() < deadline, "the backgrounded command never finished"
        time.sleep(0.05)
    lines = [line for line in log.read_text().splitlines() if not line.startswith("nohup:")]
    assert lines[0] == str(sandbox.home / "cmfl_jax")
    assert lines[1:-1] == [
        f"<{a}>"
        for a in [
            "-m", "cmfl_jax.main", "--config=configs/cross_model.py",
            "--workdir=gs://b/run 1", *extra,
        ]
    ]  # fmt: skip


def test_tpu_logs(sandbox):
    (cmd,) = commands(sandbox.run(TPU_VM, "logs", "--dry-run", "--name", "my-tpu").stdout)
    assert cmd[4:6] == ["ssh", "my-tpu"]
    assert "--worker=0" in cmd
    assert option_value(cmd, "--command") == "tail -n 100 -F cmfl_jax.log"
    (cmd,) = commands(
        sandbox.run(TPU_VM, "logs", "-n", "--worker", "3", "--lines=20", "--no-follow").stdout
    )
    assert "--worker=3" in cmd
    assert option_value(cmd, "--command") == "tail -n 20 cmfl_jax.log"


def test_tpu_stop_and_delete(sandbox):
    (stop,) = commands(sandbox.run(TPU_VM, "stop", "--dry-run").stdout)
    assert "--worker=all" in stop and "pkill" in option_value(stop, "--command")
    (delete,) = commands(sandbox.run(TPU_VM, "delete", "--dry-run", "--name", "x").stdout)
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "x"]
    assert "--quiet" not in delete
    (delete,) = commands(sandbox.run(TPU_VM, "delete", "--dry-run", "--yes").stdout)
    assert "--quiet" in delete


def test_tpu_dry_run_via_env(sandbox):
    (cmd,) = commands(sandbox.run(TPU_VM, "delete", DRY_RUN="1").stdout)
    assert cmd[4] == "delete"


def test_tpu_without_gcloud_fails_cleanly(tmp_path):
    box = Sandbox(tmp_path, stubs=())
    proc = box.run(TPU_VM, "create", check_rc=None)
    assert proc.returncode != 0
    assert "gcloud not found" in proc.stderr
    # ... while a dry run needs no gcloud at all.
    assert commands(box.run(TPU_VM, "create", "--dry-run").stdout)


def test_tpu_executes_the_printed_commands(tmp_path):
    """Without --dry-run, gcloud gets exactly the words the dry run prints."""
    box = Sandbox(tmp_path)
    args = ("run", "--name", "my-tpu")
    extra = ("--", "--config.x=a b")
    printed = commands(box.run(TPU_VM, *args, "--dry-run", *extra).stdout)
    assert box.called() == ""
    proc = box.run(TPU_VM, *args, *extra)
    assert commands(
        "\n".join(line for line in proc.stderr.splitlines() if line.startswith("+ "))
    ) == printed
    calls = box.called().splitlines()
    assert calls[0] == f"CALL {box.bin / 'gcloud'}"
    assert calls[1:] == printed[0][1:]


# ------------------------------------------------------ slurm_gpu.sbatch --


def test_slurm_sbatch_header():
    lines = SLURM_GPU.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    # sbatch stops reading #SBATCH lines at the first command.
    first_command = next(
        i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")
    )
    directives = [line for line in lines[:first_command] if line.startswith("#SBATCH ")]
    assert not [line for line in lines[first_command:] if line.startswith("#SBATCH")]
    text = "\n".join(directives)
    for option in ("--nodes=", "--ntasks-per-node=1", "--gpus-per-node=", "--time="):
        assert option in text


def test_slurm_dry_run_outside_slurm(sandbox):
    proc = sandbox.run(SLURM_GPU, "--dry-run", "--", "--config.train.num_epochs=3")
    (cmd,) = commands(proc.stdout)
    assert cmd[0] == "srun"
    assert cmd[-3:-1] == ["bash", "-c"]
    task = cmd[-1]
    assert f"cd {REPO_ROOT}" in task
    assert "-m cmfl_jax.main" in task
    assert "--config=configs/cross_model.py" in task
    assert "--workdir=runs/slurm-local" in task
    assert "--coordinator_address=" in task
    assert "--num_processes=$SLURM_NTASKS" in task
    assert "--process_id=$SLURM_PROCID" in task
    assert task.endswith("--config.train.num_epochs=3")
    # No SLURM: this host, port 20000 + job id 0.
    assert re.search(r"--coordinator_address=[^\s:]+:20000 ", task), task


def test_slurm_dry_run_with_slurm_env(sandbox):
    proc = sandbox.run(
        SLURM_GPU, "--dry-run", "--mode", "train",
        SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu[03-04,07],cpu1",
        SLURM_NTASKS="4", SLURM_NNODES="4",
    )  # fmt: skip
    task = commands(proc.stdout)[0][-1]
    assert "--coordinator_address=gpu03:24242" in task
    assert "--workdir=runs/slurm-4242" in task
    assert "--mode=train" in task
    assert "4 process(es)" in proc.stderr


def test_slurm_coordinator_from_scontrol(tmp_path):
    box = Sandbox(tmp_path)
    box.add_stub("scontrol", 'printf "nodeA\\nnodeB\\n"')
    proc = box.run(SLURM_GPU, "-n", SLURM_JOB_ID="7", SLURM_JOB_NODELIST="node[A-B]")
    task = commands(proc.stdout)[0][-1]
    assert "--coordinator_address=nodeA:20007" in task
    # scontrol show hostnames is the only query; srun is never called.
    assert box.called().splitlines() == [
        f"CALL {box.bin / 'scontrol'}", "show", "hostnames", "node[A-B]"
    ]


def test_slurm_settings(sandbox):
    proc = sandbox.run(
        SLURM_GPU, "--dry-run", "--coordinator-address", "head", "--port=1234",
        "--config", "configs/x.py", "--workdir", "/shared/runs/a b", "--python", "python",
        "--srun-args", "--cpu-bind=none --mpi=none",
    )  # fmt: skip
    (cmd,) = commands(proc.stdout)
    assert cmd[:4] == ["srun", "--kill-on-bad-exit=1", "--cpu-bind=none", "--mpi=none"]
    task = cmd[-1]
    assert "exec python -m cmfl_jax.main" in task
    assert "--coordinator_address=head:1234" in task
    assert "--config=configs/x.py" in task
    assert "'--workdir=/shared/runs/a b'" in task
    proc = sandbox.run(
        SLURM_GPU, "--dry-run", COORDINATOR_ADDRESS="h:99", WORKDIR="w", CONFIG="c.py"
    )
    task = commands(proc.stdout)[0][-1]
    assert "--coordinator_address=h:99" in task
    assert "--workdir=w" in task and "--config=c.py" in task


def test_slurm_task_command_runs_per_process(sandbox):
    """Each task's shell fills in its own --process_id / --num_processes."""
    fake_python = sandbox.root / "fakepy" / "python"
    write_fake_python(fake_python)
    extra = ["--config.a=1", "--config.b=x y 'z'"]
    proc = sandbox.run(SLURM_GPU, "-n", "--python", str(fake_python), "--", *extra)
    task = commands(proc.stdout)[0][-1]
    for procid in ("0", "3"):
        out = subprocess.run(
            [BASH, "-c", task],
            env=sandbox.env(SLURM_NTASKS="4", SLURM_PROCID=procid),
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.splitlines()
        assert out[0] == str(REPO_ROOT)
        args = [line[1:-1] for line in out[1:-1]]
        assert args[:2] == ["-m", "cmfl_jax.main"]
        assert "--num_processes=4" in args
        assert f"--process_id={procid}" in args
        assert args[-2:] == extra


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--bogus"], {}, "unknown argument '--bogus'"),
        (["stray"], {}, "unknown argument 'stray'"),
        (["--dry-run", "--port", "http"], {}, "port must be a number"),
        ([], {}, "not inside a SLURM job"),
    ],
)
def test_slurm_bad_usage_fails(sandbox, args, env, message):
    proc = sandbox.run(SLURM_GPU, *args, check_rc=None, **env)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert proc.stdout == ""
