"""The attribution head's classes: bona fide plus every generator of the
training split, fixed when training starts and stored in the checkpoint's
config, so evaluation, predict, export and the service read the same list."""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections
import numpy as np

from cmfl_jax.data.split import Split

#: Class 0: every bona fide image, whatever its camera or source name.
BONA_FIDE = "bona_fide"
#: Source index of an image whose generator is not a class (eval of unseen families).
UNSEEN = -1


def enabled(config: Any) -> bool:
  """Whether the config asks for the attribution head."""
  return bool(config.get("attribution", {}).get("enabled", False))


def num_sources(config: Any) -> int:
  """Width of the attribution head (0: no head; the classes must be resolved)."""
  if not enabled(config):
    return 0
  classes = tuple(config.attribution.classes)
  if not classes:
    raise ValueError("attribution.classes is empty: it is filled from the training split when "
                     "training starts (attribution.resolve) and stored with the checkpoint")
  return len(classes)


def head_classes(config: Any) -> tuple[str, ...]:
  """The attribution head's classes as the config holds them (empty: no head)."""
  return tuple(config.attribution.classes) if enabled(config) else ()


def source_ids(split: Split, classes: Sequence[str]) -> np.ndarray:
  """int32 [N]: each example's class index; bona fide -> 0, a generator not in
  `classes` -> UNSEEN."""
  index = {name: i for i, name in enumerate(classes)}
  ids = np.asarray([index.get(g, UNSEEN) for g in split.generators], np.int32)
  return np.where(split.labels == 1, 0, ids).astype(np.int32)


def resolve(config: ml_collections.ConfigDict, train_split: Split) -> ml_collections.ConfigDict:
  """A copy of `config` whose `attribution.classes` is bona fide plus the
  training split's generators (sorted), or the configured list checked
  against them. ValueError (naming the key) for a generator with fewer than
  `attribution.min_train_images` training images, a configured class the
  split lacks, or a training generator the list lacks."""
  if not enabled(config):
    return config
  attack = train_split.labels != 1
  names, counts = np.unique(train_split.generators[attack], return_counts=True)
  found = dict(zip(names.tolist(), counts.tolist()))
  configured = tuple(config.attribution.classes)
  if configured:
    if configured[0] != BONA_FIDE:
      raise ValueError(f"attribution.classes must start with {BONA_FIDE!r}, got {configured}")
    missing = sorted(set(configured[1:]) - set(found))
    extra = sorted(set(found) - set(configured[1:]))
    if missing or extra:
      raise ValueError(f"attribution.classes {list(configured)} do not match the generators of "
                       f"training split {train_split.name!r} {sorted(found)}: "
                       + "; ".join(filter(None, [missing and f"no training images of {missing}",
                                                 extra and f"not listed: {extra}"])))
  least = int(config.attribution.min_train_images)
  few = {g: n for g, n in found.items() if n < least}
  n_real = int((~attack).sum())
  if n_real < least:
    few[BONA_FIDE] = n_real
  if few:
    raise ValueError(f"attribution: too few training images per class in split "
                     f"{train_split.name!r}: {few} (attribution.min_train_images={least}); "
                     "add images, merge generators, or lower the minimum")
  if len(found) < 1:
    raise ValueError(f"attribution: training split {train_split.name!r} has no generator")
  return _with_classes(config, configured or (BONA_FIDE, *sorted(found)))


def from_checkpoint(config: ml_collections.ConfigDict, meta: dict) -> ml_collections.ConfigDict:
  """`config` with the classes the checkpoint was trained with (`meta`: its
  metadata): a config given on the command line for evaluation has none."""
  if not enabled(config) or tuple(config.attribution.classes):
    return config
  trained = meta.get("config", {}).get("attribution", {})
  if not trained.get("classes"):
    raise ValueError("attribution.enabled is set but the checkpoint has no attribution head "
                     "(trained without it)")
  return _with_classes(config, tuple(trained["classes"]))


def _with_classes(config: ml_collections.ConfigDict, names: Sequence[str]
                  ) -> ml_collections.ConfigDict:
  """A copy of `config` (the caller's stays as it is) with these classes."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.attribution.classes = tuple(names)
  return copy


def balance_weights(sources: np.ndarray, epoch_order: np.ndarray, num_classes: int
                    ) -> np.ndarray:
  """float32 [N]: each example's weight in the attribution loss, the inverse
  of its class's share of a training epoch (`epoch_order`: the epoch's example
  indices, oversampling included), normalised to mean 1 over the epoch. The
  detector's balance makes bona fide half of every epoch and each of K
  generators 1/(2K); unweighted, the head's cheapest answer is "bona fide".
  Every class then weighs the same in the loss."""
  counts = np.bincount(sources[epoch_order], minlength=num_classes).astype(np.float64)
  per_class = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
  return per_class[sources].astype(np.float32)
