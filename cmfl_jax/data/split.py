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
    """The examples where `keep` (bool [N]) is true, in any storage."""
    return Split(self.name, self.labels[keep], self.generators[keep],
                 _SELECT[type(self.storage)](self.storage, keep),
                 None if self.subjects is None else self.subjects[keep])

  def check_both_classes(self) -> None:
    counts = np.bincount(self.labels, minlength=2)
    if counts.min() == 0:
      missing = "bona fide (label 1)" if counts[1] == 0 else "attack (label 0)"
      raise DataError(f"split {self.name!r} has no {missing} images ({len(self)} examples)")


def split_summary(splits: Mapping[str, Split]) -> Sequence[str]:
  return [f"{name}: {len(s)} examples, {int(s.labels.sum())} bona fide, "
          f"{int(len(s) - s.labels.sum())} attack" for name, s in splits.items()]
