"""The function every artifact serves: uint8 images -> named P(real) outputs,
built from a checkpoint.

It is the model's own `__call__` (ImageNet normalisation and the log-FFT
spectrum computed inside, from the raw pixels), the heads' sigmoids, the
dev-set Platt calibration and the verdict thresholds, and with the
attribution head the generator decided by the dev-fitted open-set rule
(`attribution.openset.decide_jax`), closed over the restored weights so that
each artifact is one self-contained function. The model is rebuilt with
XLA's own operations (`ops="xla"`): the GEMM-built CPU kernels used for
training (`cmfl_jax.models.kernels`) have the same parameters and values but
are a CPU speed device, not a portable program.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cmfl_jax import models
from cmfl_jax.attribution import openset
from cmfl_jax.exporting.errors import ExportError
from cmfl_jax.training import checkpointing, steps

#: Head of the model -> output name.
HEAD_OUTPUTS = {"joint": "p_real", "rgb": "p_real_rgb", "freq": "p_real_freq"}
#: Every output an artifact may have, with what it means (the card lists these).
OUTPUTS = {
    "p_real": "P(real) of the joint head (the score of predict and evaluate)",
    "p_real_rgb": "P(real) of the RGB head (two_stream only)",
    "p_real_freq": "P(real) of the spectrum head (two_stream only)",
    "p_real_platt": "p_real after the Platt scaling fitted on the dev set "
                    "(same ranking; equals p_real when the checkpoint has none)",
    "threshold_dev": "verdict threshold on p_real: the dev-set EER threshold (0.5 where the "
                     "checkpoint has none); repeated per image",
    "threshold_calibration": "verdict threshold on p_real of the chosen --calibration; "
                             "repeated per image (only with --calibration)",
    openset.PROBS: "float32 [batch, classes]: softmax of the attribution head over the "
                   "classes listed under attribution (only with the attribution head)",
    openset.INDEX: "int32: index of the class the attribution head names, -1 = unknown "
                   "generator (its open-set score is below the dev-fitted threshold; only "
                   "with the attribution head)",
    openset.CONFIDENCE: "softmax probability of the most likely class, also for unknown "
                        "(only with the attribution head)",
}
#: The attribution head's outputs, in the card's order.
ATTRIBUTION_OUTPUTS = (openset.PROBS, openset.INDEX, openset.CONFIDENCE)
#: Probabilities are clipped as `evaluate.logits_of` does before the calibration.
_P_CLIP = 1e-7


@dataclasses.dataclass(frozen=True)
class Restored:
  """A checkpoint, read back: its config, weights (host arrays) and metadata."""

  config: ml_collections.ConfigDict
  model: models.ModelConfig     # with portable XLA ops
  params: Any
  batch_stats: Any
  meta: dict
  kind: str
  step: int


def restore(workdir: str, which: str) -> Restored:
  """Checkpoint `which` (best | latest | STEP) of `workdir`; ExportError if it
  is missing or cannot be read (damaged files, fingerprint mismatch)."""
  try:
    kind, step = checkpointing.select_step(workdir, which)
    manager = checkpointing.make_managers(workdir)[kind]
    config = ml_collections.ConfigDict(checkpointing.read_meta(manager, step)["config"])
    abstract, programs = steps.create_train_state(config, steps.make_mesh(), abstract=True)
    state, meta = checkpointing.restore(manager, step, abstract)
  except (FileNotFoundError, checkpointing.CheckpointError) as e:
    raise ExportError(str(e)) from None
  except Exception as e:  # noqa: BLE001 - Orbax raises many types for a broken checkpoint
    raise ExportError(f"checkpoint {which!r} of {workdir} cannot be read: "
                      f"{(str(e).strip() or type(e).__name__).splitlines()[0][:300]}") from None
  portable = dataclasses.replace(programs.model, ops="xla")
  return Restored(config, portable, jax.device_get(state.params),
                  jax.device_get(state.batch_stats), dict(meta), kind, step)


@dataclasses.dataclass(frozen=True)
class Constants:
  """Numbers baked into the artifact beside the weights."""

  dev_threshold: float
  platt: dict              # {"method": "platt", "a", "b"}; a=1, b=0 when none was fitted
  calibration_threshold: float | None
  attribution: dict | None = None  # the open-set fit (`openset.fit`); None: no head

  @classmethod
  def of(cls, meta: dict, calibration: dict | None, num_sources: int = 0) -> "Constants":
    """From the checkpoint's meta; `num_sources`: the attribution head's width
    (0: none), whose open-set fit must then be stored with the checkpoint."""
    dev = meta.get("dev_threshold")
    platt = meta.get("calibration") or {"method": "platt", "a": 1.0, "b": 0.0}
    if platt.get("method") != "platt" or not float(platt["a"]) > 0:
      raise ExportError(f"the checkpoint's calibration {platt} is not an increasing Platt map")
    return cls(0.5 if dev is None else float(dev), dict(platt),
               None if calibration is None else float(calibration["threshold"]),
               _attribution(meta, num_sources))


def _attribution(meta: dict, num_sources: int) -> dict | None:
  """The checkpoint's open-set fit, checked against the head; None without a head."""
  if not num_sources:
    return None
  fitted = meta.get("attribution")
  if not fitted:
    raise ExportError("the checkpoint has the attribution head but no open-set threshold "
                      "fitted on the dev split (meta 'attribution'); it cannot say 'unknown'")
  if fitted.get("rule") not in openset.JAX_RULES or len(fitted.get("classes", ())) != num_sources:
    raise ExportError(f"the checkpoint's open-set fit (rule {fitted.get('rule')!r}, classes "
                      f"{fitted.get('classes')}) does not match its {num_sources}-class head")
  return dict(fitted)


def output_names(model: models.ModelConfig, constants: Constants) -> list[str]:
  """The artifact's outputs, in the order the card lists them."""
  names = ["p_real", *(["p_real_rgb", "p_real_freq"] if model.arch == "two_stream" else []),
           "p_real_platt", "threshold_dev"]
  names += ["threshold_calibration"] if constants.calibration_threshold is not None else []
  return names + (list(ATTRIBUTION_OUTPUTS) if constants.attribution else [])


def serving_function(restored: Restored, constants: Constants
                     ) -> Callable[[jax.Array], dict[str, jax.Array]]:
  """images uint8 [batch, H, W, 3] -> {output name: float32 [batch]} (and the
  attribution outputs: see OUTPUTS); pure."""
  module = models.create_model(restored.model, rngs=nnx.Rngs(0))
  module.eval()
  graphdef = nnx.split(module, nnx.Param, nnx.BatchStat)[0]
  model = nnx.merge(graphdef, restored.params, restored.batch_stats)
  a, b = float(constants.platt["a"]), float(constants.platt["b"])

  def serve(images: jax.Array) -> dict[str, jax.Array]:
    outputs = model(images)
    out = {HEAD_OUTPUTS[head]: jax.nn.sigmoid(logit)
           for head, logit in models.binary_heads(outputs).items()}
    if constants.attribution:
      (out[openset.INDEX], out[openset.CONFIDENCE],
       out[openset.PROBS]) = openset.decide_jax(outputs[models.SOURCE].astype(jnp.float32),
                                                constants.attribution)
    p = jnp.clip(out["p_real"], _P_CLIP, 1 - _P_CLIP)  # as predict: logit of the clipped P
    out["p_real_platt"] = jax.nn.sigmoid(a * (jnp.log(p) - jnp.log1p(-p)) + b)
    ones = jnp.ones_like(out["p_real"])
    out["threshold_dev"] = ones * constants.dev_threshold
    if constants.calibration_threshold is not None:
      out["threshold_calibration"] = ones * constants.calibration_threshold
    return out

  return serve


def probe_images(size: int, seed: int = 0) -> np.ndarray:
  """Images for the self-check of a written artifact, unlike each other so
  that the scores and the integer generator decision vary across them:
  white noise, smooth noise (upsampled), flat colours, a gradient and a
  checkerboard, 8 in all."""
  rng = np.random.default_rng(seed)
  noise = rng.integers(0, 256, (2, size, size, 3))
  coarse = rng.integers(0, 256, (2, 4, 4, 3)).repeat(-(-size // 4), 1).repeat(-(-size // 4), 2)
  flat = np.stack([np.full((size, size, 3), v) for v in ((20, 20, 20), (200, 170, 150))])
  ramp = np.broadcast_to(np.linspace(0, 255, size)[None, :, None], (size, size, 3))
  board = ((np.indices((size, size)).sum(0) % 2) * 255)[..., None].repeat(3, -1)
  return np.concatenate([noise, coarse[:, :size, :size], flat, ramp[None], board[None]]
                        ).astype(np.uint8)
