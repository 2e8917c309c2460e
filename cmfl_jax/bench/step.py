"""Step benchmarks: the compiled train and eval steps of cmfl_jax, the official
model in PyTorch on the same shapes, and the ratios, timed in alternating
rounds (see `cmfl_jax.bench` for the command). Needs neither TensorFlow nor
data."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cmfl_jax import backend, models
from cmfl_jax.bench.timing import interleaved_times
from cmfl_jax.training import losses, steps


def emit(record: dict[str, Any]) -> None:
  print(json.dumps(record), flush=True)


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_peak(dtype: Any = jnp.float32) -> tuple[Callable[[], Any], float]:
  """One large matmul (random data, default precision) and its FLOPs: its
  achieved rate is the machine's practical peak in `dtype`."""
  n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  return lambda: f(a, a).block_until_ready(), 2.0 * n ** 3


def device_peak_mib() -> float | None:
  """Peak bytes in use on the first device (accelerators; None on CPU)."""
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  return round(stats["peak_bytes_in_use"] / 2 ** 20, 1) if stats else None


def _sig(x: float, digits: int = 4) -> float:
  """`x` rounded to significant digits (rates span 1e-2 to 1e6 across machines)."""
  return float(f"{x:.{digits}g}")


def _flops(stage) -> float | None:
  """XLA's FLOP count of a lowered or compiled step (None if unavailable)."""
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) if cost and "flops" in cost else None


def _buffers_mib(compiled) -> float | None:
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  return round((mem.temp_size_in_bytes + mem.argument_size_in_bytes
                + mem.output_size_in_bytes) / 2 ** 20, 1)


@dataclasses.dataclass
class StepRunner:
  """One framework's prepared steps: `train()` / `eval()` each run `steps`
  steps on a fixed batch and block; `record` holds what is known up front."""

  record: dict[str, Any]
  train: Callable[[], None]
  eval: Callable[[], None]
  batch_size: int
  steps: int
  device_peak_mib: Callable[[], float | None] = lambda: None
  train_flops: float | None = None   # per step, for GFLOP/s and MFU
  eval_flops: float | None = None


def step_flops(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """FLOPs of the train and eval steps as written (XLA's cost analysis of the
  un-optimised step): lowering only, from abstract state, so any shape can be
  counted on any machine, e.g. an accelerator's batch on a laptop."""
  size, batch_size = config.data.image_size, config.train.batch_size
  mesh = steps.make_mesh()
  state, programs = steps.create_train_state(config, mesh, abstract=True)
  train_fn, eval_fn = steps.compile_steps(programs, losses.LossConfig.from_config(config.loss),
                                          mesh, state,
                                          backend.step_compiler_options(programs.model, mesh))
  batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
           "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
           "mask": jax.ShapeDtypeStruct((batch_size,), jnp.bool_)}
  return {"arch": config.model.arch, "image_size": size, "batch_size": batch_size,
          "dtype": config.model.dtype, "ops": programs.model.ops,
          "train_gflop_per_step": _sig(_flops(train_fn.lower(state, batch)) / 1e9),
          "eval_gflop_per_step": _sig(_flops(eval_fn.lower(state, batch)) / 1e9)}


def jax_runner(config: ml_collections.ConfigDict, steps_per_repeat: int) -> StepRunner:
  """The compiled train/eval steps of `config`'s model on random images."""
  size, batch_size = config.data.image_size, config.train.batch_size
  mesh = steps.make_mesh()
  state, programs = steps.create_train_state(config, mesh)
  train_fn, eval_fn = steps.compile_steps(programs, losses.LossConfig.from_config(config.loss),
                                          mesh, state,
                                          backend.step_compiler_options(programs.model, mesh))
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
           "label": (np.arange(batch_size) % 2).astype(np.int32),
           "mask": np.ones(batch_size, bool)}
  batch = {k: jax.device_put(v, steps.batch_sharding(mesh)) for k, v in batch.items()}
  start = time.perf_counter()
  train_lowered = train_fn.lower(state, batch)
  train_compiled = train_lowered.compile()
  compile_s = time.perf_counter() - start
  eval_lowered = eval_fn.lower(state, batch)
  eval_compiled = eval_lowered.compile()
  holder = [state]

  def run_train():
    for _ in range(steps_per_repeat):
      holder[0], m = train_compiled(holder[0], batch)
    jax.block_until_ready(m)

  def run_eval():
    for _ in range(steps_per_repeat):
      out = eval_compiled(holder[0], batch)
    jax.block_until_ready(out)

  record = {
      "impl": "cmfl_jax", "arch": config.model.arch, "objective": config.loss.objective,
      "image_size": size, "batch_size": batch_size, "dtype": config.model.dtype,
      "ops": programs.model.ops,
      "cpu_matmul": backend.cpu_matmul_in_effect(programs.model.cpu_matmul,
                                                 backend.platform(mesh)),
      "params": models.count_params(state.params), "compile_s": round(compile_s, 1),
      "xla_train_buffers_mib": _buffers_mib(train_compiled),
      "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
  }
  # FLOPs of the steps as written, before backend optimisation: the same count
  # on every backend (a compiled GPU executable's omits cuDNN's convolutions).
  return StepRunner(record, run_train, run_eval, batch_size, steps_per_repeat,
                    device_peak_mib, _flops(train_lowered), _flops(eval_lowered))


def torch_runner(config: ml_collections.ConfigDict, steps_per_repeat: int) -> StepRunner:
  """The official model's train/eval steps in PyTorch on the same shapes: on
  the GPU when JAX runs on one (TF32 allowed, as JAX's default precision
  does), under bfloat16 autocast when the config's dtype is bfloat16."""
  import torch
  from cmfl_jax.bench import torch_reference
  device = torch.device("cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available()
                        else "cpu")
  if device.type == "cpu":
    torch.set_num_threads(os.cpu_count() or 1)
  else:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  torch.manual_seed(0)
  size, batch_size = config.data.image_size, config.train.batch_size
  spec = models.ModelConfig.from_config(config.model).spec
  two = config.model.arch == "two_stream"
  model = (torch_reference.MultiStreamDenseNet if two else torch_reference.OneStreamDenseNet)(
      spec, config.model.num_blocks).to(device)
  inputs = [torch.randn(batch_size, 3, size, size, device=device) for _ in range(2 if two else 1)]
  y = (torch.arange(batch_size, device=device) % 2).float()
  bf16 = config.model.dtype == "bfloat16"
  step = torch_reference.train_step_fn(model, config.optim.learning_rate,
                                       config.optim.weight_decay,
                                       torch.bfloat16 if bf16 else None)

  def sync():
    if device.type == "cuda":
      torch.cuda.synchronize()

  def run_train():
    for _ in range(steps_per_repeat):
      step(inputs, y)
    sync()

  def run_eval():
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
      for _ in range(steps_per_repeat):
        model(*inputs)
    sync()

  record = {"impl": "pytorch", "torch": torch.__version__, "arch": config.model.arch,
            "image_size": size, "batch_size": batch_size, "dtype": config.model.dtype,
            "device": (torch.cuda.get_device_name() if device.type == "cuda"
                       else f"cpu, {torch.get_num_threads()} threads")}

  def device_peak():
    if device.type == "cuda":
      return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return None

  return StepRunner(record, run_train, run_eval, batch_size, steps_per_repeat, device_peak)


def step_records(runners: list[StepRunner], repeats: int,
                 peak_matmul: tuple[Callable[[], Any], float]) -> list[dict[str, Any]]:
  """Times every runner's train and eval, and the peak matmul, in
  alternation (so the MFU's two rates come from the same moments); one
  record per runner."""
  peak_fn, peak_flops = peak_matmul
  fns = [fn for r in runners for fn in (r.train, r.eval)]
  times = interleaved_times(fns + [peak_fn], repeats)
  peak = peak_flops / statistics.median(times[-1]) / 1e9
  records = []
  for i, runner in enumerate(runners):
    t_train, t_eval = (statistics.median(t) / runner.steps for t in times[2 * i:2 * i + 2])
    rec = dict(runner.record)
    train_flops, eval_flops = runner.train_flops, runner.eval_flops
    rec.update({
        "train_images_per_sec": round(runner.batch_size / t_train, 2),
        "eval_images_per_sec": round(runner.batch_size / t_eval, 2),
        "train_step_ms": round(1000 * t_train, 2),
        "train_s_per_repeat": [_sig(t) for t in times[2 * i]],
        "eval_s_per_repeat": [_sig(t) for t in times[2 * i + 1]],
    })
    if train_flops:
      rec.update({
          "train_gflop_per_step": _sig(train_flops / 1e9),
          "eval_gflop_per_step": _sig(eval_flops / 1e9),
          "train_gflops_per_sec": _sig(train_flops / t_train / 1e9),
          "eval_gflops_per_sec": _sig(eval_flops / t_eval / 1e9),
          "matmul_peak_gflops_per_sec": _sig(peak),
          "train_mfu": _sig(train_flops / t_train / 1e9 / peak),
          "eval_mfu": _sig(eval_flops / t_eval / 1e9 / peak),
      })
    rec.update({"peak_rss_mib": round(peak_rss_mib(), 1),
                "device_peak_mib": runner.device_peak_mib()})
    records.append(rec)
  return records


def ratio_record(mine: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
  """cmfl_jax's speed over `ref`'s (PyTorch or a --baseline variant)."""
  vs = "pytorch" if ref["impl"] == "pytorch" else "baseline"
  return {
      "what": "ratio", "image_size": mine["image_size"], "batch_size": mine["batch_size"],
      "dtype": mine["dtype"], **({"baseline": ref["baseline"]} if vs == "baseline" else {}),
      f"train_speedup_vs_{vs}": round(mine["train_images_per_sec"]
                                      / ref["train_images_per_sec"], 3),
      f"eval_speedup_vs_{vs}": round(mine["eval_images_per_sec"]
                                     / ref["eval_images_per_sec"], 3),
      # Same-round ratios (the rounds alternate): their spread shows how much
      # of the ratio is noise.
      "train_speedup_per_repeat": [round(t / m, 3) for m, t in zip(
          mine["train_s_per_repeat"], ref["train_s_per_repeat"])],
      "eval_speedup_per_repeat": [round(t / m, 3) for m, t in zip(
          mine["eval_s_per_repeat"], ref["eval_s_per_repeat"])]}
