#!/usr/bin/env bash
# The accelerator benchmark of issue #8 (BENCHMARKS.md, "On a GPU"): the
# paper's model at 224x224, cmfl_jax vs the official PyTorch model in the same
# process, float32 and bfloat16, on one GPU. Prints one JSON line per
# measurement and keeps them in $1/bench.jsonl.
#
#   bash benchmarks/gpu.sh OUTDIR [DEADLINE_SECONDS]
#
# Needs jax with CUDA, flax, optax, ml-collections, absl-py and torch with
# CUDA; TensorFlow is not needed for `--what=step`. Configurations run in
# order of importance and are skipped once DEADLINE_SECONDS (default 480)
# have passed, so a time-boxed machine still returns the first ones.
set -uo pipefail
out=${1:-gpu_results}
deadline=${2:-480}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
"$python" - <<'PY' | tee -a "$out/gpu.txt"
import jax, flax, optax, torch
print(f"jax {jax.__version__} flax {flax.__version__} optax {optax.__version__} "
      f"torch {torch.__version__}; jax devices {jax.devices()}")
PY

run() {
  if (( SECONDS > deadline )); then
    echo "skipped (deadline): $*" | tee -a "$out/skipped.txt"
    return
  fi
  echo "== $*" >&2
  "$python" -m cmfl_jax.bench --what=step --config.data.image_size=224 --steps=10 --repeats=5 "$@" \
    2> >(tail -n 20 >> "$out/stderr.txt") | tee -a "$out/bench.jsonl"
}

run --config.train.batch_size=64 --config.model.dtype=bfloat16 --torch
run --config.train.batch_size=64 --config.model.dtype=float32 --torch
run --config.train.batch_size=256 --config.model.dtype=bfloat16 --torch
# The CPU-tuned GEMM kernels on the GPU: why `model.ops=auto` picks XLA's there.
run --config.train.batch_size=64 --config.model.dtype=bfloat16 --config.model.ops=gemm
echo "done in ${SECONDS}s"
