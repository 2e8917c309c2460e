"""A trained model ready to score: a restored checkpoint or an exported model,
compiled for one padded batch shape, answering {head: P(real)} (and the
attribution head's open-set decision). Shared by predict, serve, explain and
calibrate."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from cmfl_jax import models
from cmfl_jax.attribution import classes as attribution_classes, openset
from cmfl_jax.evaluation import evaluate
from cmfl_jax.training import checkpointing, steps


def config_from_checkpoint(workdir: str, which: str) -> ml_collections.ConfigDict:
  """The training config stored (as JSON) in the checkpoint's metadata."""
  kind, step = checkpointing.select_step(workdir, which)
  meta = checkpointing.read_meta(checkpointing.make_managers(workdir)[kind], step)
  return ml_collections.ConfigDict(meta["config"])


@dataclasses.dataclass
class Model:
  """A restored checkpoint or an exported model, compiled for one padded
  batch shape: `heads(uint8 images) -> {head: P(real)}` ("joint", and "rgb",
  "freq" for two streams; with the attribution head also the open-set
  decision `openset.INDEX` and `openset.CONFIDENCE`, and for a checkpoint its
  logits `models.SOURCE`); `classes` names the decided indices (empty: no
  attribution head); `state`, `eval_fn` and `mesh` for a checkpoint only."""

  config: ml_collections.ConfigDict
  meta: dict
  name: str
  heads: Callable[[np.ndarray], dict[str, np.ndarray]]
  state: Any = None
  eval_fn: Callable | None = None
  mesh: Any = None
  classes: tuple[str, ...] = ()

  def score(self, images: np.ndarray) -> np.ndarray:
    """The joint head's P(real)."""
    return self.heads(images)["joint"]


#: `Model.heads` entries that are not a P(real) head.
ATTRIBUTION_OUTPUTS = (models.SOURCE, openset.INDEX, openset.CONFIDENCE)


def p_real_heads(heads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The P(real) heads of `Model.heads`' answer."""
  return {k: v for k, v in heads.items() if k not in ATTRIBUTION_OUTPUTS}


def batch_shapes(largest: int, unit: int = 1) -> tuple[int, ...]:
  """The compiled batch sizes of a service: `unit` (the images of one
  request: 1 + its stability variants), 8x, 64x that, ... below `largest`,
  and `largest`. A lone request waits for its own forward pass, a full
  queue gets the largest batch, padding wastes at most 8x. Few sizes: each
  costs a trace at start-up, even with a warm compilation cache."""
  sizes, k = [], max(1, min(unit, largest))
  while k < largest:
    sizes.append(k)
    k *= 8
  return (*sizes, largest)


def padded_batches(call: Callable[[np.ndarray], dict[str, np.ndarray]],
                   batch_size: int | Sequence[int], size: int
                   ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """`call` on fixed-size batches: chunks of the largest size, the last one
  zero-padded to the smallest size that holds it (one compilation per size,
  all done before this returns, so that images/s measures the stream)."""
  sizes = sorted({batch_size} if isinstance(batch_size, int) else set(batch_size))
  largest = sizes[-1]

  def heads(images: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for start in range(0, max(len(images), 1), largest):
      chunk = images[start:start + largest]
      n = len(chunk)
      shape = next(s for s in sizes if s >= n)
      batch = np.concatenate([chunk, np.zeros((shape - n, size, size, 3), np.uint8)])
      for head, p in call(batch).items():
        out.setdefault(head, []).append(np.asarray(p)[:n])
    return {head: np.concatenate(parts) for head, parts in out.items()}

  for shape in sizes:
    call(np.zeros((shape, size, size, 3), np.uint8))
  return heads


def load_model(workdir: str, which: str = "best", batch_size: int | None = None,
               shapes: Sequence[int] = ()) -> Model:
  """Restores and compiles checkpoint `which` for batches of `batch_size`
  (default: the config's eval batch size) and of the smaller `shapes`."""
  config = config_from_checkpoint(workdir, which)
  state, eval_fn, mesh, meta, name = evaluate.restore_for_eval(config, workdir, which)
  batch_size = batch_size or config.train.eval_batch_size
  sharding = steps.batch_sharding(mesh)
  # The open-set rule fitted on the dev split decides, as evaluation decides.
  fitted = meta.get("attribution") if attribution_classes.num_sources(config) else None

  def call(images: np.ndarray) -> dict[str, np.ndarray]:
    batch = {"image": images, "label": np.zeros(len(images), np.int32),
             "mask": np.ones(len(images), bool)}
    _, probs = eval_fn(state, jax.device_put(batch, sharding))
    heads = jax.device_get(probs)
    if fitted:
      heads[openset.INDEX], heads[openset.CONFIDENCE] = openset.decide(heads[models.SOURCE],
                                                                       fitted)
    return heads

  return Model(config, meta, name, padded_batches(call, (*shapes, batch_size),
                                                  config.data.image_size),
               state, eval_fn, mesh, tuple(fitted["classes"]) if fitted else ())


#: Export output -> `Model.heads` entry.
_ARTIFACT_HEADS = {"p_real": "joint", "p_real_rgb": "rgb", "p_real_freq": "freq",
                   openset.INDEX: openset.INDEX, openset.CONFIDENCE: openset.CONFIDENCE}


def load_exported(directory: str, batch_size: int | None = None,
                  shapes: Sequence[int] = ()) -> Model:
  """An exported model (`cmfl_jax.export`): its card's config, thresholds and
  calibrations; its P(real) outputs as the heads, and the generator it
  decided where it has the attribution head."""
  from cmfl_jax.exporting import artifact
  loaded = artifact.load(directory)
  card = loaded.card
  chosen = (card.get("calibration") or {}).get("chosen")
  meta = {"dev_threshold": card["thresholds"]["dev"] if card["thresholds"]["dev_stored"] else None,
          "calibration": card.get("platt_scaling",  # cards before #39: calibration.platt
                                  (card.get("calibration") or {}).get("platt")),
          "unsure_band": card.get("unsure_band"),
          "chosen_calibration": chosen and {**chosen["record"], "name": chosen["name"],
                                            "threshold": chosen["threshold"]},
          "fingerprint": card["checkpoint"].get("fingerprint"),
          "card": card}
  if card.get("attribution"):
    meta["attribution"] = card["attribution"]
  config = loaded.config

  def call(images: np.ndarray) -> dict[str, np.ndarray]:
    return {head: v for k, v in loaded.call(images).items()
            if (head := _ARTIFACT_HEADS.get(k))}

  return Model(config, meta, f"{card['checkpoint']['kind']}_{card['checkpoint']['step']}",
               padded_batches(call, (*shapes, batch_size or config.train.eval_batch_size),
                              config.data.image_size),
               classes=tuple(meta.get("attribution", {}).get("classes", ())))
