"""A corpus with a planted trace, a tiny detector trained on it, and the
checks that an explanation finds the trace: the test bed of tests/
test_explanations.py and of the method comparison in BENCHMARKS.md.

Every image is a smooth random field (1/f^2 spectrum). Attacks carry the
artefact: a `PATCH` x `PATCH` grating at `ARTEFACT_FREQ` (cycles per image
along (y, x)) at a random place. Bona fide images carry a decoy at a random
place: a grating of the same energy (same L2 norm) at `DECOY_FREQ`, another
orientation and frequency. Telling them apart needs the trace's structure,
not its presence or energy.

  python -m cmfl_jax.explanations.planted   # pointing-game hits per method
  python -m cmfl_jax.explanations.planted --workdir=DIR --images=DIR
      # a trained planted detector saved as a workdir (for cmfl_jax.explain)
      # and held-out planted images as PNG files
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cmfl_jax import models
from cmfl_jax.explanations import radial, saliency

PATCH = 6
ARTEFACT_FREQ = (0, 8)   # cycles per 32 pixels along (y, x): vertical stripes, period 4 px
DECOY_FREQ = (10, 0)     # horizontal stripes, period 3.2 px
#: L2 norm of every patch, on [0, 1] pixels per channel.
PATCH_NORM = 1.2


def nyquist(size: int) -> tuple[int, int]:
  """The checkerboard's frequency: (size/2, size/2) cycles, the Nyquist
  corner of the fftshifted spectrum (index (0, 0))."""
  return (size // 2, size // 2)


def tiny_model_config(arch: str = "two_stream", input_kind: str = "rgb") -> ml_collections.ConfigDict:
  """configs/smoke.py's model sizes."""
  return ml_collections.ConfigDict(dict(arch=arch, input=input_kind, backbone="densenet121",
                                        growth_rate=4, block_config=(1, 1), num_init_features=8,
                                        bn_size=2, num_blocks=2, ops="xla"))


def _background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  f = np.fft.fftfreq(size) * size
  amp = 1.0 / np.maximum(np.hypot(f[:, None], f[None, :]), 1.0) ** 2
  noise = rng.normal(size=(n, 3, size, size))
  x = np.real(np.fft.ifft2(np.fft.fft2(noise) * amp))
  x -= x.min(axis=(-2, -1), keepdims=True)
  x /= x.max(axis=(-2, -1), keepdims=True)
  return 0.2 + 0.6 * np.moveaxis(x, 1, -1)


def _grating(freq: tuple[int, int], size: int, phase: float, patch: int = PATCH) -> np.ndarray:
  y, x = np.mgrid[:patch, :patch]
  g = np.sin(2 * np.pi * (freq[0] * y + freq[1] * x) / size + phase)
  return g / np.linalg.norm(g) * PATCH_NORM


def corpus(n: int, size: int = 32, seed: int = 0,
           artefact: tuple[int, int] = ARTEFACT_FREQ, patch: int = PATCH
           ) -> dict[str, np.ndarray]:
  """{"images": uint8 [n, size, size, 3], "labels": 1 bona fide / 0 attack
  (alternating), "boxes": [n, 2] top-left corner of the patch}; `artefact`
  is the attacks' grating (`nyquist(size)`: a checkerboard), `patch` the
  side of both gratings (`size`: the whole image, a single spectrum bin)."""
  rng = np.random.default_rng(seed)
  images = _background(rng, n, size)
  labels = np.arange(n) % 2
  boxes = rng.integers(0, size - patch + 1, (n, 2))
  for i in range(n):
    freq = DECOY_FREQ if labels[i] else artefact
    (y, x) = boxes[i]
    images[i, y:y + patch, x:x + patch] += _grating(freq, size, rng.uniform(0, 2 * np.pi),
                                                    patch)[..., None]
  return {"images": np.clip(np.round(images * 255), 0, 255).astype(np.uint8),
          "labels": labels.astype(np.int32), "boxes": boxes}


def train(data: dict[str, np.ndarray], model_config: Any = None, steps: int = 300,
          batch_size: int = 32, learning_rate: float = 3e-3, seed: int = 0) -> Any:
  """A detector trained with BCE on every head (a plain optax loop); eval mode."""
  model_config = models.ModelConfig.from_config(model_config or tiny_model_config())
  model = models.create_model(model_config, rngs=nnx.Rngs(seed))
  model.train()
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  tx = optax.adam(learning_rate)

  @jax.jit
  def step(params, stats, opt, x, y):
    def loss_fn(p):
      m = nnx.merge(graphdef, p, stats, copy=True)
      out = m(x)
      loss = sum(jnp.mean(optax.sigmoid_binary_cross_entropy(v, y)) for v in out.values())
      return loss, nnx.state(m, nnx.BatchStat)
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), stats, opt, loss

  opt = tx.init(params)
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(data["labels"]), batch_size)
    params, stats, opt, _ = step(params, stats, opt, data["images"][idx],
                                 data["labels"][idx].astype(np.float32))
  model = nnx.merge(graphdef, params, stats)
  model.eval()
  return model


def support(maps: np.ndarray, signs: np.ndarray | None = None) -> np.ndarray:
  """`[B, H, W]`: |map| (channels summed) without `signs`; with the model's
  decision signs (+1 bona fide, -1 attack) per image, the signed map's
  support for that decision (a map whose peaks survive a random model by
  following the input alone cannot get its sign right)."""
  if signs is None:
    return radial.magnitude(maps)
  m = np.asarray(maps, np.float32)
  return np.asarray(signs, np.float32)[:, None, None] * (m.sum(-1) if m.ndim == 4 else m)


def pointing_hits(maps: np.ndarray, boxes: np.ndarray, signs: np.ndarray | None = None
                  ) -> np.ndarray:
  """Per image: does the maximum of `support` (3x3 box-smoothed) fall inside
  the planted patch?"""
  m = support(maps, signs)
  padded = np.pad(m, ((0, 0), (1, 1), (1, 1)))
  smooth = sum(padded[:, i:i + m.shape[1], j:j + m.shape[2]] for i in range(3) for j in range(3))
  peak = np.stack(np.unravel_index(np.argmax(smooth.reshape(len(m), -1), axis=1), m.shape[1:]), 1)
  return np.all((peak >= boxes) & (peak < boxes + PATCH), axis=1)


def frequency_bins(freq: tuple[int, int], size: int, radius: float = 2.5) -> np.ndarray:
  """Boolean `[size, size]` mask of the fftshifted bins near +-`freq`."""
  c = size // 2
  y, x = np.mgrid[:size, :size]
  near = lambda fy, fx: np.hypot(y - (c + fy), x - (c + fx)) <= radius
  return near(*freq) | near(-freq[0], -freq[1])


def frequency_energy(maps: np.ndarray, size: int, signs: np.ndarray | None = None
                     ) -> dict[str, np.ndarray]:
  """Per image: mean `support` on the artefact's and on the decoy's bins."""
  m = support(maps, signs)
  return {name: m[:, frequency_bins(f, size)].mean(axis=1)
          for name, f in (("artefact", ARTEFACT_FREQ), ("decoy", DECOY_FREQ))}


def compare_methods(n_test: int = 96, steps: int = 300, seed: int = 0) -> dict[str, Any]:
  """Pointing-game hits on the attacks of a held-out planted corpus, per
  method, for the trained model and for re-initialised weights; |map| and
  the map's signed support of the decision."""
  from cmfl_jax.explanations import sanity
  start = time.perf_counter()
  model = train(corpus(1024, seed=seed), steps=steps, seed=seed)
  test = corpus(n_test, seed=seed + 1000)
  attacks = test["labels"] == 0
  probs = np.asarray(jax.nn.sigmoid(model(test["images"])["joint"]))
  out = {"accuracy": float(np.mean((probs >= 0.5) == (test["labels"] == 1))),
         "attacks": int(attacks.sum()), "train_seconds": round(time.perf_counter() - start, 1)}
  signs = np.where(probs[attacks] >= 0.5, 1.0, -1.0)
  random_model = sanity.reinitialised(models.ModelConfig.from_config(tiny_model_config()), seed + 7)
  boxes, size = test["boxes"][attacks], test["images"].shape[1]
  for name, m in (("trained", model), ("random", random_model)):
    decision = signs if name == "trained" else np.where(
        np.asarray(m(test["images"][attacks])["joint"]) >= 0, 1.0, -1.0)
    for method in saliency.METHODS:
      maps = {k: np.asarray(v) for k, v in
              saliency.compile_method(m, method)(test["images"][attacks]).items()}
      # Grad-CAM is already the (ReLU'd) evidence for the decision: |map| only.
      for kind, sg in (("abs", None),) + ((("signed", decision),) if method != "gradcam" else ()):
        out[f"{name}/{method}/hits_{kind}"] = int(pointing_hits(maps["rgb"], boxes, sg).sum())
        if method != "gradcam":
          e = frequency_energy(maps["freq"], size, sg)
          out[f"{name}/{method}/freq_artefact_minus_decoy_{kind}"] = round(
              float(np.mean(e["artefact"] - e["decoy"])), 5)
  return out


def save_workdir(model: Any, workdir: str, seed: int = 0) -> None:
  """`model` as the step-0 "best" checkpoint of `workdir`, with a config
  (configs/smoke.py, 32x32, the tiny model) that `cmfl_jax.explain` reads."""
  import json
  import math
  import os
  import runpy
  from cmfl_jax.training import checkpointing, steps as steps_lib
  config = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "..", "configs",
                                       "smoke.py"))["get_config"]()
  config.model.update(tiny_model_config())
  model.train()  # the train-mode graph's state, as a training run saves it
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  model.eval()
  state = steps_lib.fresh_state(params, stats, steps_lib.make_optimizer(config.optim), seed)
  meta = {"step": 0, "epoch": 0, "step_in_epoch": 0, "steps_per_epoch": None, "val_loss": None,
          "best_val_loss": None, "dev_threshold": None, "planted": True,
          "config": json.loads(config.to_json_best_effort())}
  manager = checkpointing.make_managers(workdir)[checkpointing.BEST]
  checkpointing.save(manager, 0, state, meta, metrics={"val_loss": math.inf})
  checkpointing.wait(manager)


def main(argv) -> None:
  del argv
  import json
  import os
  from absl import flags
  fv = flags.FLAGS
  if not fv.workdir:
    print(json.dumps(compare_methods()))
    return
  model = train(corpus(1024, seed=0), steps=300)
  save_workdir(model, fv.workdir)
  if fv.images:
    from PIL import Image
    os.makedirs(fv.images, exist_ok=True)
    test = corpus(8, seed=1000)
    for i, (image, label) in enumerate(zip(test["images"], test["labels"])):
      Image.fromarray(image).save(os.path.join(
          fv.images, f"{i:02d}_{'bona_fide' if label else 'attack'}.png"))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "Save the trained planted detector here.")
  flags.DEFINE_string("images", None, "Write held-out planted images (PNG) here.")
  app.run(main)
