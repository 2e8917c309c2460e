"""The embedded benchmark: simulation in NumPy (`simulate`), TFDS builder
(`builder`, imported on demand: it needs TensorFlow Datasets)."""

from cmfl_jax.data.synthetic.simulate import FAMILIES, REAL_SOURCES, SPLITS

__all__ = ["FAMILIES", "REAL_SOURCES", "SPLITS"]
