"""Taking a trained detector out of the project: a TensorFlow SavedModel, a
`jax.export` artifact and a model card, written together and atomically
(`bundle.export_model`), and scoring with them (`artifact.load`).

Modules: `serving_fn` (the pure function uint8 images -> P(real) dict, from a
checkpoint), `calibrations` (the `<workdir>/calibrations/<name>.json` files),
`savedmodel` and `jax_export` (the two formats), `card` (the model card),
`staging` (write-then-rename of the output directory), `bundle` (all of it),
`artifact` (loading an exported directory for `predict --model`).
"""

from cmfl_jax.exporting.errors import ExportError

__all__ = ["ExportError"]
