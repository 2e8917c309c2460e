"""The benchmark's images by version: `sample` is what the TFDS builder
stores. Version 1 (`simulate`) is kept buildable so its published tables
stay reproducible; version 2 (`v2`) is the default."""

from __future__ import annotations

from types import ModuleType
from typing import Iterator

import numpy as np

from cmfl_jax.data.synthetic import simulate, v2

# Version -> its module: `render(source, rng, size)` draws one image, the
# docstring's first paragraph is the TFDS description.
VERSIONS: dict[str, ModuleType] = {"1.0.0": simulate, "2.0.0": v2}
LATEST = "2.0.0"


def sample(source: str, split: str, num: int, size: int, seed: int = 0,
           version: str = LATEST) -> Iterator[np.ndarray]:
  """Yields `num` uint8 images of one source ("real", "real2" or a family).

  Image i depends only on (version, seed, split, source, i): content seeds are
  disjoint across splits and sources, and the same arguments always give the
  same pixels.
  """
  if size % 8:
    raise ValueError(f"image size must be a multiple of 8, got {size}")
  if version not in VERSIONS:
    raise ValueError(f"unknown cmfl_synth_faces version {version!r}; choose from "
                     f"{sorted(VERSIONS)}")
  if source not in simulate.REAL_SOURCES + simulate.FAMILIES:
    raise ValueError(f"unknown source {source!r}; choose from "
                     f"{simulate.REAL_SOURCES + simulate.FAMILIES}")
  render = VERSIONS[version].render
  for i in range(num):
    rng = np.random.default_rng([seed, simulate.SPLIT_SEED[split], simulate.SOURCE_SEED[source],
                                 i])
    yield simulate.store(np.round(render(source, rng, size) * 255).astype(np.uint8), rng)
