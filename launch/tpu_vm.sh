#!/usr/bin/env bash
# Create, provision, run and tear down a Cloud TPU VM slice for cmfl_jax.
#
# Runs on your workstation (needs the gcloud CLI, except with --dry-run).
# Written for bash >= 3.2 so that it also runs with the stock macOS bash.
# See launch/README.md and `launch/tpu_vm.sh --help`.
set -euo pipefail

SCRIPT_NAME="$(basename "$0")"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# ---------------------------------------------------------------- settings --
TPU_NAME="${TPU_NAME:-cmfl-tpu}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
PROJECT="${PROJECT:-}"
CONFIG="${CONFIG:-configs/cross_model.py}"
WORKDIR="${WORKDIR:-}"            # empty: runs/$TPU_NAME under REMOTE_DIR
MODE="${MODE:-}"                  # empty: cmfl_jax.main's own default
# jax >= 0.7 needs Python >= 3.11; the TPU VM images are Ubuntu 22.04 with
# Python 3.10, so setup installs python3.11 with apt and makes a venv.
PYTHON="${PYTHON:-python3.11}"
APT_PACKAGES="${APT_PACKAGES-python3.11 python3.11-venv}"   # empty: no apt
VENV="${VENV-cmfl_venv}"          # empty: no venv, use PYTHON directly
JAX_PACKAGE="${JAX_PACKAGE:-jax[tpu]}"
REMOTE_DIR="${REMOTE_DIR:-cmfl_jax}"
LOG_FILE="${LOG_FILE:-cmfl_jax.log}"
SYNC_PATHS="${SYNC_PATHS:-pyproject.toml README.md LICENSE cmfl_jax configs launch}"
WORKER="${WORKER:-0}"
TAIL_LINES="${TAIL_LINES:-100}"
FOLLOW="${FOLLOW:-1}"
SPOT="${SPOT:-0}"
PREEMPTIBLE="${PREEMPTIBLE:-0}"
ASSUME_YES="${ASSUME_YES:-0}"
DRY_RUN="${DRY_RUN:-0}"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [options] COMMAND [options] [-- ARGS_FOR_cmfl_jax.main...]

Manage a Cloud TPU VM (single- or multi-host slice) for cmfl_jax.

Commands:
  create   gcloud compute tpus tpu-vm create the slice
  setup    copy the repo to every worker (scp --recurse, --worker=all) and
           install it there: apt-get install APT_PACKAGES, PYTHON -m venv
           VENV, then pip install -e . "$JAX_PACKAGE" in that venv
  run      start training on every worker (--worker=all) in the background
           with nohup; each worker writes its own log to ~/$LOG_FILE.
           Arguments after '--' are passed on to cmfl_jax.main, e.g.
           -- --config.train.num_epochs=3
  logs     tail the log of one worker (default worker 0, see --worker)
  stop     kill cmfl_jax.main on every worker
  delete   delete the slice
  help     show this text

Options (flag / environment variable, default):
  --name NAME              TPU_NAME          $TPU_NAME
  --zone ZONE              ZONE              $ZONE
  --accelerator-type TYPE  ACCELERATOR_TYPE  $ACCELERATOR_TYPE
  --version RUNTIME        TPU_VERSION       $TPU_VERSION
  --project PROJECT        PROJECT           (gcloud's configured project)
  --spot                   SPOT=1            create a Spot slice
  --preemptible            PREEMPTIBLE=1     create a preemptible slice
  --config PATH            CONFIG            $CONFIG
                                             (relative to the remote repo)
  --workdir DIR            WORKDIR           runs/<TPU_NAME> (relative to the
                                             remote repo, i.e. per worker);
                                             use gs://BUCKET/PATH on
                                             multi-host slices
  --mode MODE              MODE              (main's default) train|eval|train_and_eval
  --python BIN             PYTHON            $PYTHON (makes the venv)
  --venv DIR               VENV              $VENV (relative to the remote
                                             \$HOME, or absolute; empty: no
                                             venv, install with PYTHON)
  --apt-packages "P ..."   APT_PACKAGES      $APT_PACKAGES
                                             (empty: skip apt-get)
  --jax-package SPEC       JAX_PACKAGE       $JAX_PACKAGE
  --remote-dir DIR         REMOTE_DIR        $REMOTE_DIR (relative to the
                                             remote \$HOME, or absolute)
  --sync-paths "P ..."     SYNC_PATHS        $SYNC_PATHS
                                             (copied by setup if present)
  --log-file PATH          LOG_FILE          $LOG_FILE (relative to the
                                             remote \$HOME, or absolute)
  --worker N               WORKER            $WORKER (logs only)
  --lines N                TAIL_LINES        $TAIL_LINES (logs only)
  --no-follow              FOLLOW=0          print the log tail and exit
  -y, --yes                ASSUME_YES=1      delete without confirmation
  -n, --dry-run            DRY_RUN=1         print every command, one per
                                             line prefixed with '+ ', and
                                             run nothing
  -h, --help                                 show this text

Examples:
  $SCRIPT_NAME create --name my-v4 --zone us-central2-b --accelerator-type v4-32 --spot
  $SCRIPT_NAME setup  --name my-v4
  $SCRIPT_NAME run    --name my-v4 --workdir gs://my-bucket/cmfl/run1 -- --config.train.num_epochs=3
  $SCRIPT_NAME logs   --name my-v4 --worker 1
  $SCRIPT_NAME delete --name my-v4 --yes
EOF
}

die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  printf "Run '%s --help' for usage.\n" "$SCRIPT_NAME" >&2
  exit 2
}

note() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; }

# Quote one word for a POSIX shell: unchanged when it only has safe
# characters, otherwise wrapped in single quotes.
shquote() {
  local s="$1" safe='^[A-Za-z0-9_./:=@%+,-]+$' sq="'" q="'\\''"
  if [[ "$s" =~ $safe ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//$sq/$q}"
  fi
}

# Quote a whole command line, word by word.
quote_cmd() {
  local out="" word
  for word in "$@"; do
    out="$out $(shquote "$word")"
  done
  printf '%s' "${out# }"
}

# Print a command ('+ ' prefix); execute it unless this is a dry run.
run_cmd() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+ %s\n' "$(quote_cmd "$@")"
  else
    printf '+ %s\n' "$(quote_cmd "$@")" >&2
    "$@"
  fi
}

# gcloud compute tpus tpu-vm VERB NAME [ARGS...] --zone=... [--project=...]
tpu_vm() {
  local verb="$1"
  shift
  local project_args=()
  if [[ -n "$PROJECT" ]]; then
    project_args=(--project="$PROJECT")
  fi
  run_cmd gcloud compute tpus tpu-vm "$verb" "$@" --zone="$ZONE" \
    ${project_args[@]+"${project_args[@]}"}
}

# A path for a remote shell command: relative paths are taken from $HOME.
remote_path() {
  case "$1" in
    /*) shquote "$1" ;;
    *) printf "\"\$HOME\"/%s" "$(shquote "$1")" ;;
  esac
}

# The interpreter that runs cmfl_jax on the workers, for a remote command.
remote_python() {
  if [[ -n "$VENV" ]]; then
    remote_path "${VENV%/}/bin/python"
  else
    shquote "$PYTHON"
  fi
}

# Run a shell command on the given worker(s) ("all" or an index).
ssh_workers() {
  local worker="$1" command="$2"
  tpu_vm ssh "$TPU_NAME" --worker="$worker" --command "$command"
}

# ----------------------------------------------------------------- parsing --
set_option() {
  local opt="$1" val="$2"
  case "$opt" in
    --name) TPU_NAME="$val" ;;
    --zone) ZONE="$val" ;;
    --accelerator-type) ACCELERATOR_TYPE="$val" ;;
    --version) TPU_VERSION="$val" ;;
    --project) PROJECT="$val" ;;
    --config) CONFIG="$val" ;;
    --workdir) WORKDIR="$val" ;;
    --mode) MODE="$val" ;;
    --python) PYTHON="$val" ;;
    --venv) VENV="$val" ;;
    --apt-packages) APT_PACKAGES="$val" ;;
    --jax-package) JAX_PACKAGE="$val" ;;
    --remote-dir) REMOTE_DIR="$val" ;;
    --sync-paths) SYNC_PATHS="$val" ;;
    --log-file) LOG_FILE="$val" ;;
    --worker) WORKER="$val" ;;
    --lines) TAIL_LINES="$val" ;;
    *) die "unknown option '$opt'" ;;
  esac
}

SUBCOMMAND=""
EXTRA_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    -n | --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --preemptible) PREEMPTIBLE=1 ;;
    --no-follow) FOLLOW=0 ;;
    -y | --yes) ASSUME_YES=1 ;;
    --)
      shift
      EXTRA_ARGS=("$@")
      break
      ;;
    --*=*) set_option "${1%%=*}" "${1#*=}" ;;
    --name | --zone | --accelerator-type | --version | --project | --config | \
      --workdir | --mode | --python | --venv | --apt-packages | \
      --jax-package | --remote-dir | \
      --sync-paths | --log-file | --worker | --lines)
      [[ $# -ge 2 ]] || die "option '$1' needs a value"
      set_option "$1" "$2"
      shift
      ;;
    -*) die "unknown option '$1'" ;;
    *)
      [[ -z "$SUBCOMMAND" ]] || die "unexpected argument '$1' (pass arguments for cmfl_jax.main after '--')"
      SUBCOMMAND="$1"
      ;;
  esac
  shift
done

case "$SUBCOMMAND" in
  create | setup | run | logs | stop | delete) ;;
  help) usage; exit 0 ;;
  "") usage >&2; die "missing command" ;;
  *) die "unknown command '$SUBCOMMAND' (expected create, setup, run, logs, stop, delete or help)" ;;
esac

[[ -n "$TPU_NAME" ]] || die "TPU name is empty (set --name or TPU_NAME)"
[[ -n "$ZONE" ]] || die "zone is empty (set --zone or ZONE)"
if [[ ${#EXTRA_ARGS[@]} -gt 0 && "$SUBCOMMAND" != run ]]; then
  die "arguments after '--' are only accepted by 'run'"
fi
if [[ "$DRY_RUN" != 1 ]] && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found on PATH (install the Google Cloud CLI, or use --dry-run)"
fi

# ---------------------------------------------------------------- commands --
cmd_create() {
  [[ -n "$ACCELERATOR_TYPE" ]] || die "accelerator type is empty"
  [[ -n "$TPU_VERSION" ]] || die "TPU runtime version is empty"
  if [[ "$SPOT" == 1 && "$PREEMPTIBLE" == 1 ]]; then
    die "--spot and --preemptible are mutually exclusive"
  fi
  local args=("$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$TPU_VERSION")
  if [[ "$SPOT" == 1 ]]; then
    args+=(--spot)
  elif [[ "$PREEMPTIBLE" == 1 ]]; then
    args+=(--preemptible)
  fi
  tpu_vm create "${args[@]}"
}

cmd_setup() {
  local sources=() names=() path
  for path in $SYNC_PATHS; do
    if [[ -e "$REPO_ROOT/$path" ]]; then
      sources+=("$REPO_ROOT/$path")
      names+=("$(shquote "$path")")
    fi
  done
  [[ ${#sources[@]} -gt 0 ]] || die "none of SYNC_PATHS ($SYNC_PATHS) exists under $REPO_ROOT"
  local dir
  dir="$(shquote "$REMOTE_DIR")"
  # Fresh copy: drop what the previous setup copied, keep everything else
  # (e.g. a local workdir under runs/).
  ssh_workers all "mkdir -p $dir && cd $dir && rm -rf ${names[*]}"
  tpu_vm scp --recurse "${sources[@]}" "$TPU_NAME:$REMOTE_DIR/" --worker=all
  local install="" py
  if [[ -n "$APT_PACKAGES" ]]; then
    local packages=()
    read -r -a packages <<<"$APT_PACKAGES"
    # The lock timeout waits out unattended-upgrades on a freshly booted VM.
    local apt=(sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    install="$(quote_cmd "${apt[@]}" update -qq) && $(quote_cmd "${apt[@]}" install -y -qq "${packages[@]}") && "
  fi
  if [[ -n "$VENV" ]]; then
    install="$install$(shquote "$PYTHON") -m venv $(remote_path "$VENV") && "
  fi
  py="$(remote_python)"
  install="${install}cd $dir && $py -m pip install --upgrade pip && $py -m pip install -e . $(shquote "$JAX_PACKAGE")"
  ssh_workers all "$install"
}

cmd_run() {
  local workdir="${WORKDIR:-runs/$TPU_NAME}"
  if [[ "$workdir" != gs://* ]]; then
    note "workdir '$workdir' is on each worker's local disk; use --workdir gs://BUCKET/PATH on multi-host slices so that all hosts share checkpoints."
  fi
  local train=(-m cmfl_jax.main --config="$CONFIG" --workdir="$workdir")
  if [[ -n "$MODE" ]]; then
    train+=(--mode="$MODE")
  fi
  train+=(${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
  # The subshell's output goes to LOG_FILE (relative to $HOME); nohup and the
  # redirections let the job outlive the ssh session.
  ssh_workers all "(cd $(shquote "$REMOTE_DIR") && exec nohup $(remote_python) $(quote_cmd "${train[@]}")) > $(shquote "$LOG_FILE") 2>&1 < /dev/null &"
  if [[ "$DRY_RUN" != 1 ]]; then
    note "started on all workers of $TPU_NAME; follow with: $SCRIPT_NAME logs --name $TPU_NAME --worker 0"
  fi
}

cmd_logs() {
  local worker_re='^[0-9]+$' lines_re='^[0-9]+$'
  [[ "$WORKER" =~ $worker_re ]] || die "--worker must be a worker index (0, 1, ...), got '$WORKER'"
  [[ "$TAIL_LINES" =~ $lines_re ]] || die "--lines must be a number, got '$TAIL_LINES'"
  local tail_cmd=(tail -n "$TAIL_LINES")
  if [[ "$FOLLOW" == 1 ]]; then
    tail_cmd+=(-F)
  fi
  tail_cmd+=("$LOG_FILE")
  ssh_workers "$WORKER" "$(quote_cmd "${tail_cmd[@]}")"
}

cmd_stop() {
  # '[-]m' matches '-m' without matching this command line itself.
  ssh_workers all "pkill -f '[-]m cmfl_jax[.]main' || true"
}

cmd_delete() {
  if [[ "$ASSUME_YES" == 1 ]]; then
    tpu_vm delete "$TPU_NAME" --quiet
  else
    tpu_vm delete "$TPU_NAME"
  fi
}

"cmd_$SUBCOMMAND"
