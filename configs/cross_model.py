"""The main job: train the proposed two_stream + CMFL model on one known
generator family of the embedded benchmark and evaluate it on all of them.

Runs out of the box on 2 CPU cores: the benchmark (`cmfl_synth_faces/64`,
generated on first use) at 64x64, the paper architecture (DenseNet-161 through
transition2, both streams), 2 epochs. Change the known family with
--config.data.train_split=real_train+progan_train (and val_split likewise).
For real data see configs/default.py and docs/data.md.
"""

import os
import runpy

from cmfl_jax.data.synthetic import FAMILIES  # the benchmark's six generator families

_default = runpy.run_path(os.path.join(os.path.dirname(__file__), "default.py"))


def get_config(known: str = "stylegan2"):
  config = _default["get_config"]()
  data = config.data
  data.source = "synthetic"
  data.synthetic_config = "64"
  data.image_size = 64
  data.train_split = f"real_train+{known}_train"
  data.val_split = f"real_dev+{known}_dev"
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
