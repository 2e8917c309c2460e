"""The paper's comparison: rgb/bce, fft/bce, two_stream/bce and two_stream/cmfl,
each trained on one of three known families and evaluated on all six families
of the embedded benchmark (and on the unseen camera), in one combined report:

  python -m cmfl_jax.main --config=configs/paper_table.py --workdir=runs/paper_table

12 runs. To fit 2 CPU cores the streams are a reduced DenseNet (growth 12,
blocks (4, 4)) at 64x64; the paper's DenseNet-161 streams come back with
  --config.model.growth_rate=48 --config.model.block_config='(6,12)'
  --config.model.num_init_features=96
(or start from configs/default.py with real data and the same `sweep` field).
"""

import os
import runpy

import ml_collections

from cmfl_jax.data.synthetic import FAMILIES

_cross_model = runpy.run_path(os.path.join(os.path.dirname(__file__), "cross_model.py"))

KNOWN = ("stylegan2", "stylegan3", "swagan")   # the paper's three
# The paper's four models: (arch, one_stream input, objective).
VARIANTS = {
    "rgb/bce": ("one_stream", "rgb", "bce"),
    "fft/bce": ("one_stream", "freq", "bce"),
    "two_stream/bce": ("two_stream", "rgb", "bce"),
    "two_stream/cmfl": ("two_stream", "rgb", "cmfl"),
}


#: Reduced grids by name (`--config=configs/paper_table.py:<grid>`): "seeds" is the
#: multi-seed rerun of BENCHMARKS.md (2 CPU cores): the four models trained on one
#: known family (stylegan2) instead of three, 3 seeds each, no robustness conditions.
#: "families": the spectrum-only and the proposed model trained on each of the six
#: families in turn (one seed, no robustness): the full cross-family matrix.
GRIDS = {
    "full": (tuple(VARIANTS), KNOWN, ()),
    "seeds": (tuple(VARIANTS), ("stylegan2",), (0, 1, 2)),
    "families": (("fft/bce", "two_stream/cmfl"), FAMILIES, ()),
}


def get_config(grid: str = "full"):
  config = _cross_model["get_config"](recipe="clean")
  if grid not in GRIDS:
    raise ValueError(f"paper_table grid must be one of {sorted(GRIDS)}, got {grid!r}")
  variants, known_families, seeds = GRIDS[grid]
  cells = []
  for name in variants:
    arch, input_kind, objective = VARIANTS[name]
    for known in known_families:
      # Its splits for this known family, with the paper's data (fakes from clean
      # content, no randomised processing): the published tables' recipe.
      family = _cross_model["get_config"](known, recipe="clean")
      cells.append((f"{name}@{known}", {
          "model.arch": arch, "model.input": input_kind, "loss.objective": objective,
          "data.train_split": family.data.train_split, "data.val_split": family.data.val_split,
          "data.eval_splits": family.data.eval_splits,
          "eval.robustness_splits": family.eval.robustness_splits}))
  config.sweep = ml_collections.ConfigDict()
  config.sweep.cells = tuple(cells)
  # Several seeds per cell (mean ± std, paired tests over images and seeds):
  # --config.sweep.seeds='(0,1,2)'. () = one run per cell with config.seed.
  config.sweep.seeds = seeds
  config.sweep.compare = tuple((a, b) for a, b in (
      ("two_stream/cmfl", "two_stream/bce"), ("two_stream/cmfl", "fft/bce"),
      ("two_stream/cmfl", "rgb/bce")) if a in variants and b in variants)
  model = config.model
  model.growth_rate = 12
  model.block_config = (4, 4)
  model.num_init_features = 24
  config.train.num_epochs = 3
  config.train.log_every_steps = 16
  config.train.checkpoint_every_steps = 64
  config.eval.conditions = ("jpeg:70", "blur:1", "resize:0.5", "noise:5") if grid == "full" else ()
  return config
