"""The `jax.export` artifact: StableHLO plus calling convention, serialized.

Batch-polymorphic (a symbolic leading dimension "b"), lowered for several
platforms at once (the platform is chosen when it is called). Loading needs
only `jax` (`jax.export.deserialize`), not TensorFlow and not this project.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax import export

FILENAME = "model.jax_exported"


def export_function(serve: Callable, image_size: int, platforms: Sequence[str]
                    ) -> export.Exported:
  """`serve` exported for uint8 [b, size, size, 3] images, b symbolic."""
  (batch,) = export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), np.uint8)
  return export.export(jax.jit(serve), platforms=tuple(platforms))(spec)


def write(exported: export.Exported, path: str) -> int:
  """Writes the serialized artifact; returns its size in bytes."""
  data = exported.serialize()
  with open(path, "wb") as f:
    f.write(data)
  return len(data)


def read(path: str) -> export.Exported:
  """The artifact at `path` (no code is executed: it is a flatbuffer of StableHLO)."""
  with open(path, "rb") as f:
    return export.deserialize(bytearray(f.read()))
