"""Cost of the explanations per image, one JSON line per (size, method).

  python -m cmfl_jax.bench.explain [--sizes=64,224] [--methods=ig,gradcam]
      [--batch_size=8] [--steps=16] [--repeats=2]

The paper's model (configs/default.py: two_stream DenseNet-161 through
transition2) with random weights (the cost does not depend on them) on
random uint8 images: seconds per image of the jit-compiled, batched
`saliency.explain` (compile time apart; median of repeats after a
warm-up) and the compile time. Needs neither TensorFlow nor data.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["64", "224"], "Image sizes.")
_METHODS = flags.DEFINE_list("methods", ["ig", "gradcam"], "Methods (saliency.METHODS).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per call.")
_STEPS = flags.DEFINE_integer("steps", 16, "Integrated-gradients path points.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repeats (median).")


def main(argv) -> None:
  del argv
  import jax
  import numpy as np
  from flax import nnx

  from cmfl_jax import models
  from cmfl_jax.bench import timing
  from cmfl_jax.explanations import saliency
  import runpy
  config = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "..", "configs",
                                       "default.py"))["get_config"]()
  model = models.create_model(models.ModelConfig.from_config(config.model), rngs=nnx.Rngs(0))
  model.eval()
  for size in map(int, _SIZES.value):
    images = np.random.default_rng(0).integers(0, 256, (_BATCH.value, size, size, 3), np.uint8)
    for method in _METHODS.value:
      run = saliency.compile_method(model, method, _STEPS.value)
      start = time.perf_counter()
      jax.block_until_ready(run(images))
      first = time.perf_counter() - start
      seconds = timing.timed(lambda: jax.block_until_ready(run(images)), _REPEATS.value)
      print(json.dumps({"what": "explain", "size": size, "method": method,
                        "steps": _STEPS.value if method != "gradcam" else None,
                        "batch": _BATCH.value, "seconds_per_image": round(seconds / _BATCH.value, 3),
                        "compile_and_first_call_s": round(first, 1),
                        "load_average": round(os.getloadavg()[0], 1)}), flush=True)


if __name__ == "__main__":
  app.run(main)
