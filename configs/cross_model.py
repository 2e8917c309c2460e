"""The main job: train the proposed two_stream + CMFL model on one known
generator and evaluate it across generators.

Runs out of the box on 2 CPU cores: paper architecture (DenseNet-161 through
transition2, both streams) at 64x64 on the built-in `toy` data, 3 epochs.
For real data use configs/default.py-style settings:
  --config.data.source=csv --config.data.data_root=/data --config.data.protocol_dir=protocols/stylegan2
  --config.data.image_size=224 --config.train.num_epochs=25
"""

import os
import runpy

_default = runpy.run_path(os.path.join(os.path.dirname(__file__), "default.py"))


def get_config():
  config = _default["get_config"]()
  data = config.data
  data.source = "toy"
  data.image_size = 64
  data.toy_sizes = {"train": 512, "dev": 128, "eval": 256, "default": 128}
  train = config.train
  train.num_epochs = 3
  train.batch_size = 32
  train.eval_batch_size = 64
  train.log_every_steps = 8
  train.checkpoint_every_steps = 16
  return config
