"""The benchmarks' default (`python -m cmfl_jax.bench`): the paper's model and
optimizer (configs/default.py) at 224x224, batch 8 (train and eval alike).
Shapes and variants by override, e.g. --config.data.image_size=64
--config.train.batch_size=32 --config.model.dtype=bfloat16."""

import os
import runpy

_default = runpy.run_path(os.path.join(os.path.dirname(__file__), "default.py"))


def get_config():
  config = _default["get_config"]()
  config.data.image_size = 224
  config.train.batch_size = config.train.eval_batch_size = 8
  return config
