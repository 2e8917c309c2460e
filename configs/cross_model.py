"""The main job: train the proposed two_stream + CMFL model on one known
generator family of the embedded benchmark and evaluate it on all of them.

Runs out of the box on 2 CPU cores: the benchmark (`cmfl_synth_faces/64`,
generated on first use) at 64x64, the paper architecture (DenseNet-161 through
transition2, both streams), 2 epochs. The training fakes are made from the
training reals and processing is randomised on both classes (recipe
"aligned", docs/generalization.md). Change the known family with
`--config=configs/cross_model.py:progan`; the recipe before issue #38 (fakes
rendered from clean content) is `--config=configs/cross_model.py:stylegan2,clean`.
For real data see configs/default.py and docs/data.md.
"""

import os
import runpy

from cmfl_jax.data.synthetic import FAMILIES, aligned_split, plain_split

_default = runpy.run_path(os.path.join(os.path.dirname(__file__), "default.py"))

#: How the training data is made (issue #38; BENCHMARKS.md "Learning the
#: generator, not the camera"): "aligned" (default) trains on fakes made from
#: the training reals (reconstructions and face inpaintings, pairs in one batch
#: with the same augmentation) with processing randomised on both classes;
#: "clean" is the recipe before, fakes rendered from clean content.
RECIPES = {
    "aligned": (aligned_split, "all"),
    "clean": (plain_split, ""),
}


def get_config(known: str = "stylegan2", recipe: str = "aligned"):
  """`--config=configs/cross_model.py[:KNOWN[,RECIPE]]`, e.g. `:progan` or
  `:stylegan2,clean`."""
  if "," in known:
    known, recipe = known.split(",", 1)
  if known not in FAMILIES:
    raise ValueError(f"cross_model known family must be one of {FAMILIES}, got {known!r}")
  if recipe not in RECIPES:
    raise ValueError(f"cross_model recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
  splits, randomize = RECIPES[recipe]
  config = _default["get_config"]()
  data = config.data
  data.source = "synthetic"
  data.synthetic_config = "64"
  data.image_size = 64
  data.train_split = splits((known,), "train")
  data.val_split = splits((known,), "dev")
  data.randomize = randomize
  # One eval split per family (real eval + that family), plus false alarms on
  # the unseen camera against the known family.
  data.eval_splits = tuple(f"real_eval+{f}_eval" for f in FAMILIES) + (
      f"real2_eval+{known}_eval",)
  data.verify = "none"  # generated in-process, nothing to check
  # Robustness table on the known family (all conditions of default.py).
  config.eval.robustness_splits = (f"real_eval+{known}_eval",)
  train = config.train
  train.num_epochs = 2                 # ~7 min end to end on 2 CPU cores, cold
  train.batch_size = 32
  train.eval_batch_size = 64
  train.log_every_steps = 8
  train.checkpoint_every_steps = 16
  # The report's per-split frequency attribution on 8 images per split, 4
  # integrated-gradients points: half a minute on 2 cores (default.py: 16, 8).
  config.eval.explain_images = 8
  config.eval.explain_steps = 4
  return config
