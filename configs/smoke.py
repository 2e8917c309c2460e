"""Seconds-long run for tests: tiny DenseNet on the in-memory toy data."""

import os
import runpy

_default = runpy.run_path(os.path.join(os.path.dirname(__file__), "default.py"))


def get_config():
  config = _default["get_config"]()
  data = config.data
  data.source = "toy"
  data.image_size = 32
  data.val_split = "dev"
  data.eval_splits = ("eval",)
  data.toy_sizes = {"train": 32, "dev": 16, "eval": 16, "default": 16}
  model = config.model
  model.backbone = "densenet121"
  model.growth_rate = 4
  model.block_config = (1, 1)
  model.num_init_features = 8
  model.bn_size = 2
  config.optim.learning_rate = 1e-3
  train = config.train
  train.num_epochs = 2
  train.batch_size = 8
  train.eval_batch_size = 8
  train.log_every_steps = 2
  train.checkpoint_every_steps = 3
  train.progress_bar = False
  config.eval.conditions = ("jpeg:50", "noise:5")
  config.eval.explain_frequencies = False  # tested on its own (tests/test_explanations.py)
  return config
