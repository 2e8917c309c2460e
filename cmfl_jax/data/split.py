"""A split: labels, generator names and where its images are. No TensorFlow.

The images of a split live in exactly one kind of storage: files on disk
(`Files`), decoded pixels in memory (`Pixels`), encoded bytes in memory
(`Encoded`) or random-access records of a TFDS data source (`Records`).
Labels: 1 = bona fide, 0 = attack.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence, Union

import numpy as np


class DataError(ValueError):
  """Bad input data, with a message naming the file/line at fault."""


@dataclasses.dataclass(frozen=True)
class Files:
  paths: np.ndarray                   # str [N] (absolute)


@dataclasses.dataclass(frozen=True)
class Pixels:
  images: np.ndarray                  # uint8 [N, H, W, 3]


@dataclasses.dataclass(frozen=True)
class Encoded:
  data: np.ndarray                    # object [N] of encoded image bytes


@dataclasses.dataclass(frozen=True)
class Records:
  source: Any                         # random access: source[i]["image"] -> uint8 [H, W, 3]


Storage = Union[Files, Pixels, Encoded, Records]


@dataclasses.dataclass(frozen=True)
class _Indexed:
  """Random access to `source[indices[i]]` (a subset of a TFDS data source)."""
  source: Any
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> Any:
    return self.source[int(self.indices[i])]


#: Storage kind -> (storage, bool mask) -> the storage of the kept examples.
_SELECT = {
    Files: lambda st, keep: Files(st.paths[keep]),
    Pixels: lambda st, keep: Pixels(st.images[keep]),
    Encoded: lambda st, keep: Encoded(st.data[keep]),
    Records: lambda st, keep: Records(_Indexed(st.source, np.flatnonzero(keep))),
}


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: labels, generator names, the images' storage and, where the
  protocol has them, subject identifiers."""

  name: str
  labels: np.ndarray                  # int32 [N], 1 = bona fide
  generators: np.ndarray              # str [N], "real" for bona fide
  storage: Storage
  subjects: np.ndarray | None = None  # str [N]
  # int [N]: the index (in this split) of the real image each fake was made
  # from (aligned fakes: a reconstruction or an inpainting of that real), -1
  # where none; training keeps each such pair in one batch, augmented alike.
  made_from: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def paths(self) -> np.ndarray | None:
    """File paths, when the images are files."""
    return self.storage.paths if isinstance(self.storage, Files) else None

  @property
  def images(self) -> np.ndarray | None:
    """Decoded pixels, when the images are held in memory."""
    return self.storage.images if isinstance(self.storage, Pixels) else None

  def where(self, i: int) -> str:
    """A name for example `i`: its path, else `<split>/<i>`."""
    return str(self.paths[i]) if self.paths is not None else f"{self.name}/{i}"

  def select(self, keep: np.ndarray) -> "Split":
    """The examples where `keep` (bool [N]) is true, in any storage (a pair
    whose real is dropped keeps its fake, unpaired)."""
    made_from = None
    if self.made_from is not None:
      new_index = np.where(keep, np.cumsum(keep) - 1, -1)
      partner = self.made_from[keep]
      made_from = np.where(partner >= 0, new_index[np.maximum(partner, 0)], -1)
    return Split(self.name, self.labels[keep], self.generators[keep],
                 _SELECT[type(self.storage)](self.storage, keep),
                 None if self.subjects is None else self.subjects[keep], made_from)

  def num_pairs(self) -> int:
    return 0 if self.made_from is None else int((self.made_from >= 0).sum())

  def check_both_classes(self) -> None:
    counts = np.bincount(self.labels, minlength=2)
    if counts.min() == 0:
      missing = "bona fide (label 1)" if counts[1] == 0 else "attack (label 0)"
      raise DataError(f"split {self.name!r} has no {missing} images ({len(self)} examples)")


def pair_indices(names: Sequence[str], made_from: Sequence[str | None], where: str,
                 strict: bool = True) -> np.ndarray | None:
  """`Split.made_from` from names: example i was made from the example named
  `made_from[i]` (None or "": from none). The named real must be a bona fide
  example of the same split; `strict`: else a `DataError` naming both (off:
  that fake stays unpaired). None when no example names one."""
  if not any(made_from):
    return None
  index = {n: i for i, n in enumerate(names)}
  out = np.full(len(names), -1, np.int64)
  for i, source in enumerate(made_from):
    if not source:
      continue
    if source in index:
      out[i] = index[source]
    elif strict:
      raise DataError(f"{where}: {names[i]} was made from {source}, which is not in the split")
  return out


def check_pairs(split: Split) -> None:
  """A pair is a fake (label 0) made from a bona fide image (label 1)."""
  if split.made_from is None:
    return
  fakes = np.flatnonzero(split.made_from >= 0)
  bad = [i for i in fakes
         if split.labels[i] != 0 or split.labels[split.made_from[i]] != 1]
  if bad:
    i = bad[0]
    raise DataError(f"split {split.name!r}: {split.where(i)} is paired with "
                    f"{split.where(int(split.made_from[i]))}, but a pair must be a synthetic image "
                    f"made from a bona fide one ({len(bad)} such pairs)")


def split_summary(splits: Mapping[str, Split]) -> Sequence[str]:
  return [f"{name}: {len(s)} examples, {int(s.labels.sum())} bona fide, "
          f"{int(len(s) - s.labels.sum())} attack"
          + (f", {s.num_pairs()} made from a bona fide one of the split" if s.num_pairs() else "")
          for name, s in splits.items()]
