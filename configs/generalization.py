"""Does the detector learn the generator or the camera? (issue #38)

`--config=configs/generalization.py` (grid "recipes"): today's recipe
against each element of the new one and all of them together, 3 seeds each,
every run scored on the same evaluation images (paired comparisons,
`sweep.compare`). To fit 2 CPU cores the streams are the sweep's reduced
DenseNet (as configs/paper_table.py:seeds), 64x64, 3 epochs; the evaluation
splits are the main job's, with the conditions the issue asks about.

  today       fakes rendered from clean content (no camera), as before
  aligned     each training/dev fake made from a training/dev real: a
              whole-image reconstruction or a face inpainting
              (`<family>_recon`, `<family>_inpaint`; one of them per real and
              epoch), each pair in one batch with the same augmentation
  randomised  today's fakes, processing randomised on both classes
              (`data.randomize="all"`, cmfl_jax/data/randomize.py)
  both        aligned + randomised
  both_loco   both, validated on a training camera left out of training
              (`data.holdout_camera=1`): keep-best and the dev threshold
  both_light  both, each processing group with probability 0.2 instead of 0.5

`--config=configs/generalization.py:lofo`: leave one family out. The
recipe ("both") trained with five families known and the sixth held out,
for each of the six folds, one seed each, 6 epochs (five families need more
steps than one). The held-out family's D-EER is the number to read. A seventh
run, `both@all`, trains on all six families: the detector to serve.

Results and commands: BENCHMARKS.md, "Learning the generator, not the camera".
The analysis: `python benchmarks/generalization_table.py --workdir=...`.
"""

import os
import runpy

import ml_collections

from cmfl_jax.data.synthetic import FAMILIES, aligned_split, plain_split

_cross_model = runpy.run_path(os.path.join(os.path.dirname(__file__), "cross_model.py"))

# Test-time conditions: the verdict-flip pair (jpeg:95, resize:0.9) and
# the robustness rows of the main job's table.
CONDITIONS = ("jpeg:95", "jpeg:90", "jpeg:70", "resize:0.9", "resize:0.5", "blur:1", "noise:2")


RECIPES = {
    "today": {},
    "aligned": {"aligned": True},
    "randomised": {"data.randomize": "all"},
    "both": {"aligned": True, "data.randomize": "all"},
    "both_loco": {"aligned": True, "data.randomize": "all", "data.holdout_camera": 1},
    "both_light": {"aligned": True, "data.randomize": "all", "data.randomize_prob": 0.2},
}


def recipe_overrides(name: str, known: tuple[str, ...]) -> dict:
  """A recipe's config overrides for the given known families."""
  out = dict(RECIPES[name])
  make = aligned_split if out.pop("aligned", False) else plain_split
  out["data.train_split"] = make(known, "train")
  out["data.val_split"] = make(known, "dev")
  return out


def _reduced(config: ml_collections.ConfigDict) -> None:
  """The sweep's reduced DenseNet (configs/paper_table.py)."""
  paper = runpy.run_path(os.path.join(os.path.dirname(__file__), "paper_table.py"))
  reduced = paper["get_config"]("seeds")
  config.model = reduced.model
  for key in ("num_epochs", "log_every_steps", "checkpoint_every_steps"):
    config.train[key] = reduced.train[key]


def get_config(grid: str = "recipes"):
  """grid: "recipes" (every recipe), one recipe's name (its 3 seeds alone, into
  the same workdir layout), or "lofo"."""
  if grid not in ("recipes", "lofo", *RECIPES):
    raise ValueError(f"generalization grid must be 'recipes', 'lofo' or one of "
                     f"{sorted(RECIPES)}, got {grid!r}")
  config = _cross_model["get_config"](recipe="clean")  # recipes below add to it
  _reduced(config)
  config.eval.conditions = CONDITIONS
  # The conditions on the unseen camera too: its verdicts' stability.
  config.eval.robustness_splits = ("real_eval+stylegan2_eval", "real2_eval+stylegan2_eval")
  config.eval.explain_frequencies = False
  config.sweep = ml_collections.ConfigDict()
  if grid != "lofo":
    names = tuple(RECIPES) if grid == "recipes" else (grid,)
    config.sweep.cells = tuple((f"{name}@stylegan2", recipe_overrides(name, ("stylegan2",)))
                               for name in names)
    config.sweep.seeds = (0, 1, 2)
    config.sweep.compare = tuple(
        pair for pair in [(name, "today") for name in RECIPES if name != "today"]
        + [("both_loco", "both"), ("both_light", "both")] if set(pair) <= set(names))
    return config
  config.train.num_epochs = 6
  cells = []
  for held_out in FAMILIES:
    known = tuple(f for f in FAMILIES if f != held_out)
    overrides = recipe_overrides("both", known)
    overrides["data.eval_splits"] = tuple(f"real_eval+{f}_eval" for f in FAMILIES) + (
        f"real2_eval+{held_out}_eval",)
    overrides["eval.robustness_splits"] = (f"real_eval+{held_out}_eval",
                                           f"real2_eval+{held_out}_eval")
    cells.append((f"both@without_{held_out}", overrides))
  # The detector to serve: every family known (its D-EERs are on known families).
  cells.append(("both@all", recipe_overrides("both", FAMILIES)))
  config.sweep.cells = tuple(cells)
  config.sweep.seeds = ()
  config.sweep.compare = ()
  return config
