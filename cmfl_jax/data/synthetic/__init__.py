"""The embedded benchmark: simulation in NumPy (`simulate`), TFDS builder
(`builder`, imported on demand: it needs TensorFlow Datasets)."""

from __future__ import annotations

from cmfl_jax.data.synthetic.simulate import FAMILIES, REAL_SOURCES, SPLITS

__all__ = ["FAMILIES", "REAL_SOURCES", "SPLITS", "aligned_split", "plain_split"]


def aligned_split(families: tuple[str, ...] | list[str], split: str) -> str:
  """Bona fide plus every aligned fake of `families` ("train" or "dev"):
  reconstructions and inpaintings, each made from a real of the split.
  Training pairs each real with one of its fakes per epoch, so an epoch has
  as many fakes as reals (`data.pipeline.balanced_order`)."""
  return "+".join([f"real_{split}"] + [f"{f}_{mode}_{split}" for f in families
                                       for mode in ("recon", "inpaint")])


def plain_split(families: tuple[str, ...] | list[str], split: str) -> str:
  """Bona fide plus the families' fakes rendered from clean content (the
  recipe before issue #38)."""
  return "+".join([f"real_{split}"] + [f"{f}_{split}" for f in families])
