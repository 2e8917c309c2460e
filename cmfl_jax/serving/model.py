"""The model behind the service: predict's scorer (checkpoint in process or
exported artifact), the decode predict uses, the verdict policy and the
description `/v1/model` returns.

Uploaded bytes are decoded exactly as predict decodes a file (TF's decoders,
`ops.resize_and_crop` with the same geometry), so a served `p_real` equals
predict's score on the same file, and with the attribution head `generator`
and `generator_confidence` equal predict's columns.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from typing import Any, Callable, Sequence

import numpy as np

from cmfl_jax.serving import limits as limits_lib
from cmfl_jax.serving import verdict as verdict_lib

log = logging.getLogger("cmfl_jax.serve")


@dataclasses.dataclass
class ScoringModel:
  """Everything a request needs once the model is compiled."""

  batch_size: int
  image_size: int
  score: Callable[[np.ndarray], dict[str, np.ndarray]]  # <= batch_size images -> heads
  decode: Callable[[bytes], np.ndarray]                  # checked bytes -> model input
  policy: verdict_lib.Policy
  platt: dict | None                                     # Platt (a, b) on the logit, or None
  description: dict[str, Any]
  limits: limits_lib.Limits
  faces: Callable[[bytes], list[dict]] | None = None      # --align: bytes -> faces with inputs
  maps: Callable[[np.ndarray], list[dict]] | None = None  # --explain: images -> explanations
  classes: tuple[str, ...] = ()                           # attribution classes (): no head
  stability: tuple[str, ...] = ()                        # predict's --stability conditions

  def warm_up(self) -> None:
    """Compiles what is compiled on first use (the explanations), so that
    the service is healthy as soon as it can score."""
    if self.maps is not None:
      start = time.perf_counter()
      self.maps(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))
      log.info("explanations compiled in %.1f s", time.perf_counter() - start)

  def variants(self, images: np.ndarray) -> np.ndarray:
    """Each image followed by its `stability` variants (the decode threads
    make them, so the model's thread only scores)."""
    from cmfl_jax.verdicts import stability as stability_lib
    if not self.stability:
      return images
    parts = [images] + [stability_lib.perturbed(images, c) for c in self.stability]
    return np.stack(parts, 1).reshape(-1, *images.shape[1:])

  def run(self, images: np.ndarray) -> list[dict[str, Any]]:
    """The scores of each image of a batch (originals and variants alike)."""
    return _scored({k: np.asarray(v) for k, v in self.score(images).items()}, self.classes)

  def combine(self, scored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`run`'s scores of `variants(images)` -> one entry per image, its
    variants' P(real) under "under"."""
    step = 1 + len(self.stability)
    out = []
    for k in range(0, len(scored), step):
      entry = dict(scored[k])
      entry["under"] = {c: scored[k + 1 + j]["p_real"] for j, c in enumerate(self.stability)}
      out.append(entry)
    return out

  def answer(self, scored: dict[str, Any], unsupported: str | None = None) -> dict[str, Any]:
    """The JSON answer for one scored image (`run`): predict's verdict rule
    (too small, stability, band, threshold), the one probability to read
    and the reason in plain words."""
    from cmfl_jax.evaluation import evaluate, stats
    from cmfl_jax.verdicts import stability as stability_lib
    out = {k: v for k, v in scored.items() if k != "under"}
    out["stability"] = dict(scored.get("under", {}))
    p = out["p_real"]
    out["p_real_platt"] = (float(stats.apply_calibration(
        self.platt, evaluate.logits_of(np.asarray([p])))[0]) if self.platt else None)
    unstable = stability_lib.unstable(p, scored.get("under", {}), self.policy.threshold)
    verdict, reason = self.policy.decide(out, unstable, unsupported)
    out.update(verdict=verdict, reason=reason, meaning=verdict_lib.MEANING[verdict],
               threshold=self.policy.threshold, threshold_source=self.policy.source,
               probability=verdict_lib.probability(p, self.policy, self.platt),
               **verdict_lib.plain(verdict, reason))
    return out

  def results(self, heads: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The answers for a batch's heads (no stability variants)."""
    return [self.answer(r) for r in _scored(heads, self.classes)]


def _scored(heads: dict[str, np.ndarray], classes: tuple[str, ...]) -> list[dict[str, Any]]:
  from cmfl_jax.attribution import openset
  from cmfl_jax.scoring.model import p_real_heads
  n = len(heads["joint"])
  named = openset.answers(heads, classes, n)
  p_heads = p_real_heads(heads)
  return [{"p_real": float(heads["joint"][i]),
           "heads": {k: float(v[i]) for k, v in p_heads.items()}, **named[i]} for i in range(n)]


def _decoder(geometry) -> Callable[[bytes], np.ndarray]:
  import tensorflow as tf
  from cmfl_jax.data import ops

  @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
  def decode(data):
    return ops.resize_and_crop(ops.decode_image(data), geometry)

  def run(data: bytes) -> np.ndarray:
    try:
      return decode(tf.constant(data)).numpy()
    except tf.errors.OpError as e:
      message = (e.message or type(e).__name__).strip().splitlines()[0]
      raise limits_lib.Rejected(422, f"not a readable image (TF: {message})") from None

  return run


def _face_finder(options, geometry) -> Callable[[bytes], list[dict]]:
  """bytes -> faces found as predict --align finds them (the same decoding and
  `aligned_crops` rules as for a file), each cropped to the model input."""
  from cmfl_jax.data import aligned_crops, face_detection
  from cmfl_jax.scoring.faces import model_input

  def find(data: bytes) -> list[dict]:
    image = face_detection.decode_rgb(data)
    if isinstance(image, face_detection.NoFace):  # checked already: a late decoder error
      raise limits_lib.Rejected(422, f"not a readable image ({image.reason})")
    found = aligned_crops.align_pixels(image, options)
    return [{"box": [round(float(v), 1) for v in face.box], "face_score": float(face.score),
             "image": model_input(face, geometry),
             "unsupported": aligned_crops.too_small(face, geometry.size, options.max_upscale)}
            for face in found or []]

  return find


def _checkpoint_description(workdir: str, which: str, config) -> dict[str, Any]:
  """What the model is, for strangers: no config dump, no path of this disk."""
  from cmfl_jax.training import checkpointing
  kind, step = checkpointing.select_step(workdir, which)
  meta = checkpointing.read_meta(checkpointing.make_managers(workdir)[kind], step)
  keep = ("epoch", "val_loss", "dev_threshold", "calibration", "operating_points", "fingerprint")
  attribution = {"attribution": meta["attribution"]} if meta.get("attribution") else {}
  return {"source": "checkpoint", "checkpoint": {"kind": kind, "step": step,
                                                 **{k: meta.get(k) for k in keep}, **attribution},
          "architecture": {"arch": config.model.get("arch"), "backbone": config.model.backbone},
          "input": {"size": int(config.data.image_size), "aligned": bool(config.data.aligned)},
          "training_data": {"train_split": config.data.train_split,
                            "val_split": config.data.val_split}}


#: What `/v1/model` keeps of an export's model card: what the model is and
#: how it decides, not where it was made (paths, config, software versions).
_CARD_KEYS = ("format", "created", "platt_scaling", "architecture", "input", "outputs", "thresholds",
              "unsure_band", "operating_points", "attribution", "evaluation", "intended_use",
              "limits")
_CARD_PARTS = {"checkpoint": ("kind", "step", "fingerprint", "epoch", "val_loss"),
               "training_data": ("source", "train_split", "val_split", "eval_splits",
                                 "train_sources")}
_CALIBRATION_KEYS = ("name", "threshold", "false_alarm", "delta", "kind", "n", "k", "bound",
                     "guarantee", "band", "fitted_on", "created")


def public_card(card: dict[str, Any]) -> dict[str, Any]:
  """The model card without the config, paths or versions (`_CARD_KEYS`)."""
  out = {k: card[k] for k in _CARD_KEYS if k in card}
  for part, keys in _CARD_PARTS.items():
    out[part] = {k: (card.get(part) or {}).get(k) for k in keys}
  calibration = card.get("calibration") or {}
  chosen = calibration.get("chosen")
  out.setdefault("platt_scaling", calibration.get("platt"))  # cards before #39
  out["calibration"] = {"chosen": chosen and {
      "name": chosen.get("name"), "threshold": chosen.get("threshold"),
      "record": {k: v for k, v in (chosen.get("record") or {}).items()
                 if k in _CALIBRATION_KEYS}}}
  return out


def _policy(workdir: str | None, model: str | None, meta: dict, calibration: str | None,
            using: dict | None = None) -> verdict_lib.Policy:
  """The verdict policy: predict's rule (`verdicts.rule`); a calibration named
  for an export must be the one it carries, and the one deciding must have
  been fitted on this model and input (`using`, `verdicts.binding`)."""
  from cmfl_jax import verdicts
  from cmfl_jax.exporting import calibrations
  from cmfl_jax.exporting.errors import ExportError
  chosen = None
  if workdir is not None and calibration is not None:
    chosen = calibrations.read(workdir, calibration)["record"]
  elif model is not None and calibration is not None:
    carried = (meta.get("chosen_calibration") or {}).get("name")
    if carried != calibration:
      raise ExportError(f"the export {model} carries calibration {carried or 'none'!r}, "
                        f"not {calibration!r}")
  threshold, band, source = verdicts.rule(meta, chosen, calibration, using)
  return verdict_lib.Policy(0.5 if threshold is None else threshold, source, band)


def load(workdir: str | None = None, which: str = "best", model: str | None = None,
         calibration: str | None = None, align=None,
         limits: limits_lib.Limits | None = None, batch_size: int | None = None,
         explain: bool = False, stability: Sequence[str] = ()) -> ScoringModel:
  """The model of `workdir` (checkpoint `which`) or of the export `model`,
  compiled before this returns for a few batch shapes (`scoring.model.batch_shapes`
  up to `batch_size`, default the config's eval batch size: a request waits
  for the smallest batch that holds what is queued, not a padded full one);
  with `explain`, the page's explanations too (`serving.maps`; a checkpoint
  only: an export holds no gradients' program); `stability`:
  predict's conditions, each image is also scored under them."""
  if explain and model:
    raise ValueError("--explain needs --workdir: an exported model has no explanation program")
  start = time.perf_counter()
  from cmfl_jax.data import ops, readers
  from cmfl_jax.scoring.model import (batch_shapes, config_from_checkpoint, load_exported,
                                      load_model)
  from cmfl_jax.verdicts import stability as stability_lib
  if batch_size is None:
    from cmfl_jax.exporting import artifact
    config = (artifact.read_card(model)["config"] if model else
              config_from_checkpoint(workdir, which))
    batch_size = int(config["train"]["eval_batch_size"])
  shapes = batch_shapes(batch_size, 1 + len(stability))
  if model:
    loaded = load_exported(model, batch_size, shapes)
    description = {"source": "export", "card": public_card(loaded.meta["card"])}
  else:
    loaded = load_model(workdir, which, batch_size, shapes)
    description = _checkpoint_description(workdir, which, loaded.config)
  config = loaded.config
  geometry = ops.Geometry(int(config.data.image_size),
                          True if align else bool(config.data.aligned))
  from cmfl_jax.verdicts import binding
  using = binding.fitted_on(loaded.meta, loaded.name, geometry.size, geometry.aligned,
                            bool(align))
  policy = _policy(workdir, model, loaded.meta, calibration, using)
  base = limits or limits_lib.Limits()
  limits = dataclasses.replace(base, max_pixels=min(base.max_pixels, int(config.data.max_pixels)),
                               min_side=readers.min_image_side(config.data))
  description["serving"] = {"threshold": policy.threshold, "threshold_source": policy.source,
                            "unsure_band": policy.band, "align": bool(align),
                            "batch_size": batch_size, "batch_shapes": list(shapes),
                            "max_bytes": limits.max_bytes,
                            "max_pixels": limits.max_pixels,
                            "explanations": "evidence" if explain else False,
                            "stability": list(stability)}
  decode = _decoder(geometry)
  decode(_probe_png(int(config.data.image_size)))  # trace the decode now, not on a request
  maps = None
  if explain:  # compiled on first use: `ScoringModel.warm_up`, right after the service is up
    from cmfl_jax.serving import maps as maps_lib
    maps = maps_lib.explainer(loaded, (1,))  # the page asks for one upload at a time
  log.info("model ready in %.1f s (batch shapes %s)", time.perf_counter() - start, shapes)
  return ScoringModel(batch_size, int(config.data.image_size), loaded.heads,
                      decode, policy, loaded.meta.get("calibration"), description, limits,
                      _face_finder(align, geometry) if align else None, maps, loaded.classes,
                      stability_lib.check_conditions(stability))


def _probe_png(size: int) -> bytes:
  from PIL import Image
  buffer = io.BytesIO()
  Image.new("RGB", (size, size)).save(buffer, format="PNG")
  return buffer.getvalue()
