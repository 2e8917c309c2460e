"""Sanity checks of attribution maps.

* Model-parameter randomisation (Adebayo et al. 2018): maps of the trained
  model and of re-initialised weights must differ; a map that survives the
  randomisation shows the input, not the model. Measured by the Spearman rank
  correlation per image of |map| and of the signed map (near 0: they differ).
  Integrated gradients multiply a gradient by (image - baseline); from a
  blurred baseline that factor alone is large on fine detail, so |map| keeps
  a rank correlation near 0.5 under random weights (the planted test bed)
  while the signs, which carry the model's evidence, do not survive (near 0).
* Deletion (faithfulness): removing the most-attributed pixels first
  (replaced by the blurred baseline) or zeroing the most-attributed spectrum
  bins first must lower the evidence for the model's decision faster than
  removing as many chosen at random. Evidence = the joint logit signed by the
  decision on the intact image; the area between the random and the
  attributed curve (mean over the fractions removed, in logit units) is > 0
  for a faithful map.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import stats as scipy_stats

from cmfl_jax import models
from cmfl_jax.explanations import radial, saliency, streams
from cmfl_jax.models import spectrum

#: Fractions of the pixels (or spectrum bins) removed along a deletion curve.
FRACTIONS = tuple(np.linspace(0.0, 0.5, 11))


def reinitialised(model_config: models.ModelConfig, seed: int = 1) -> streams.Model:
  """The same architecture with fresh random weights (eval mode)."""
  model = models.create_model(model_config, rngs=nnx.Rngs(seed))
  model.eval()
  return model


def rank_correlation(a: np.ndarray, b: np.ndarray, signed: bool = False) -> np.ndarray:
  """Spearman correlation per image, `[B]`, of |a| and |b| (channels
  summed), or with `signed` of the channel-summed signed maps. A map that is
  the input times a gradient keeps part of its |map| ranking under any
  weights (the input factor); its signs must not survive."""
  if signed:
    ma, mb = (np.asarray(m, np.float32) for m in (a, b))
    ma, mb = (m.sum(-1) if m.ndim == 4 else m for m in (ma, mb))
  else:
    ma, mb = radial.magnitude(a), radial.magnitude(b)
  return np.asarray([scipy_stats.spearmanr(x.ravel(), y.ravel()).statistic
                     for x, y in zip(ma, mb)], np.float64)


@functools.partial(jax.jit, static_argnames="graphdef")
def _from_pixels(graphdef, state, x):
  m = nnx.merge(graphdef, state)
  return streams.logits(m, streams.stream_inputs(m, x))["joint"]


@functools.partial(jax.jit, static_argnames="graphdef")
def _from_inputs(graphdef, state, inputs):
  return streams.logits(nnx.merge(graphdef, state), inputs)["joint"]


def evidence_programs(model: streams.Model) -> dict[str, Callable]:
  """jit-compiled joint logits: "pixels" from [0, 1] images, "inputs" from
  the streams' inputs (to edit the spectrum alone)."""
  graphdef, state = nnx.split(model)
  return {"pixels": lambda x: _from_pixels(graphdef, state, x),
          "inputs": lambda inputs: _from_inputs(graphdef, state, inputs)}


def _order(importance: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(most important first, random) orders of the H*W positions, per image."""
  flat = importance.reshape(len(importance), -1)
  return (np.argsort(-flat, axis=1, kind="stable"),
          np.stack([rng.permutation(flat.shape[1]) for _ in flat]))


def _masks(order: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """`[B, K, H, W]` masks: the first fraction k of `order` removed."""
  n = order.shape[1]
  rank = np.empty_like(order)
  np.put_along_axis(rank, order, np.arange(n)[None].repeat(len(order), 0), axis=1)
  counts = np.round(np.asarray(FRACTIONS) * n).astype(int)
  return (rank[:, None, :] < counts[None, :, None]).reshape(len(order), len(counts), *shape)


def deletion(model: streams.Model, images: np.ndarray, maps: dict[str, np.ndarray],
             seed: int = 0, programs: dict[str, Callable] | None = None) -> dict[str, np.ndarray]:
  """Deletion curves `[B, K]` ("<key>_attributed", "<key>_random") and areas
  `[B]` ("<key>_area") for the "rgb" (pixels) and "freq" (spectrum) maps."""
  programs = programs or evidence_programs(model)
  rng = np.random.default_rng(seed)
  x = np.asarray(spectrum.to_unit_range(images))
  b, h, w = x.shape[:3]
  k = len(FRACTIONS)
  inputs = {s: np.asarray(v) for s, v in streams.stream_inputs(model, x).items()}
  sign = np.sign(np.asarray(programs["inputs"](inputs)))[:, None]
  sign[sign == 0] = 1
  baseline = np.asarray(saliency.blurred(jnp.asarray(x)))
  edits = {"rgb": ("pixels", x, baseline), "freq": ("inputs", inputs.get("freq"), 0.0)}
  out = {}
  for key, (program, original, replacement) in edits.items():
    if key not in maps or original is None:
      continue
    m = np.asarray(maps[key], np.float32)
    support = sign[:, :, None] * (m.sum(-1) if m.ndim == 4 else m)
    for kind, order in zip(("attributed", "random"), _order(support, rng)):
      mask = _masks(order, (h, w))[..., None]
      edited = np.where(mask, np.asarray(replacement)[:, None] if np.ndim(replacement) else
                        replacement, original[:, None]).reshape(b * k, h, w, -1)
      if program == "pixels":
        logit = programs["pixels"](edited)
      else:
        rest = {s: np.repeat(v, k, axis=0) for s, v in inputs.items() if s != "freq"}
        logit = programs["inputs"]({**rest, "freq": edited})
      out[f"{key}_{kind}"] = sign * np.asarray(logit).reshape(b, k)
    out[f"{key}_area"] = np.mean(out[f"{key}_random"] - out[f"{key}_attributed"], axis=1)
  return out
