"""Sweeps: a config with a `sweep.cells` field runs every cell — a plain
training config made by applying the cell's `{dotted.key: value}` overrides
(any depth, ml_collections' own update) — and writes one combined report
(`report.write_sweep_report`).

Cells are `(name, overrides)` pairs built with an ordinary loop in the
config (configs/paper_table.py). A name `MODEL@DATA` (e.g.
`two_stream/cmfl@stylegan2`) puts the cell in row MODEL of the report's
matrices for known data DATA; its run lives in `<workdir>/<DATA>/<MODEL>`
(with "/" as "_") and resumes like any training run.

`sweep.seeds` (optional): every cell runs once per seed (`config.seed`), in
`.../seed<k>`; the report gives mean ± standard deviation over seeds, and
`sweep.compare` (pairs of MODEL names) adds paired comparisons on the same
evaluation images (`stats.paired_comparison`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import ml_collections
from absl import logging

from cmfl_jax.evaluation import evaluate, report
from cmfl_jax.training import loop as train, summaries

def cell_config(config: ml_collections.ConfigDict,
                overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The plain training config of one cell (`config` itself is untouched)."""
  run = ml_collections.ConfigDict(config.to_dict())
  del run["sweep"]
  for key in overrides:
    *path, leaf = key.split(".")
    node = run
    for part in path:
      node = node.get(part) if hasattr(node, "get") else None
    if node is None or not hasattr(node, "keys") or leaf not in node:
      from cmfl_jax import config as config_lib
      close = config_lib.closest_keys(run, key)
      raise ValueError(f"sweep cell override {key!r} is not a config key"
                       + (f" (closest: {', '.join(close)})" if close else ""))
  run.update_from_flattened_dict(dict(overrides))
  return run


def run_dir(workdir: str, name: str) -> str:
  model, _, data = name.partition("@")
  return os.path.join(workdir, *filter(None, [data]), model.replace("/", "_"))


def cells(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """Every cell's (name, config), validated before any work."""
  names = [name for name, _ in config.sweep.cells]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep cell names repeat: {sorted(n for n in names if names.count(n) > 1)}")
  return [(name, cell_config(config, overrides)) for name, overrides in config.sweep.cells]


def seeds(config: ml_collections.ConfigDict) -> tuple[int | None, ...]:
  """The sweep's seeds; (None,) = one run with the config's own seed."""
  return tuple(config.sweep.get("seeds") or ()) or (None,)


def run_sweep(config: ml_collections.ConfigDict, workdir: str, mode: str) -> dict[str, Any]:
  """Trains and/or evaluates every cell (for every seed), then writes the
  combined report. Returns {cell name: evaluation results}, or with
  `sweep.seeds` {cell name: [results per seed]}."""
  all_cells = cells(config)
  seed_list = seeds(config)
  results: dict[str, Any] = {}
  runs = [(name, cfg, seed) for name, cfg in all_cells for seed in seed_list]
  for i, (name, cfg, seed) in enumerate(runs):
    directory = run_dir(workdir, name)
    if seed is not None:
      cfg = ml_collections.ConfigDict(cfg.to_dict())
      cfg.seed = seed
      directory = os.path.join(directory, f"seed{seed}")
    logging.info("sweep run %d/%d: %s (seed %s) -> %s", i + 1, len(runs), name, cfg.seed,
                 directory)
    if mode in ("train", "train_and_eval"):
      train.train_and_evaluate(cfg, directory)
    if mode in ("eval", "train_and_eval"):
      res = evaluate.evaluate_checkpoint(cfg, directory)
      if seed is None:
        results[name] = res
      else:
        results.setdefault(name, []).append(res)
  if results and summaries.is_main_process():  # the report is for people: process 0
    report.write_sweep_report(all_cells, results, workdir,
                              compare=tuple(tuple(p) for p in config.sweep.get("compare", ())))
  return results
