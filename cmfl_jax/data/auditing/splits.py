"""What the data audit is given: one split's files, labels, generators and
subjects. Label convention: 1 = bona fide, 0 = attack."""

from __future__ import annotations

import dataclasses

import numpy as np

CLASS_NAMES = {1: "bona_fide", 0: "attack"}


@dataclasses.dataclass
class AuditSplit:
  """One split to audit. labels: 1 = bona fide, 0 = attack; generators: "real" for bona
  fide; subjects: identity per image (None when unknown; "" = no subject)."""
  name: str
  paths: np.ndarray
  labels: np.ndarray
  generators: np.ndarray
  subjects: np.ndarray | None = None

  def __post_init__(self):
    self.paths = np.asarray(self.paths, dtype=str).ravel()
    self.labels = np.asarray(self.labels).astype(int).ravel()
    self.generators = np.asarray(self.generators, dtype=str).ravel()
    if self.subjects is not None:
      self.subjects = np.asarray(self.subjects, dtype=object).ravel()
    n = self.paths.size
    for field in ("labels", "generators") + (("subjects",) if self.subjects is not None else ()):
      if getattr(self, field).size != n:
        raise ValueError(f"split {self.name!r}: {n} paths but {getattr(self, field).size} {field}")
    if not np.isin(self.labels, (0, 1)).all():
      raise ValueError(f"split {self.name!r}: labels must be 0 (attack) or 1 (bona fide)")

