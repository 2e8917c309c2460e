"""Models: the DenseNet stream (`densenet`), its CPU kernels (`kernels`), the
spectrum input (`spectrum`) and the detectors with their typed config
(`detectors`). Nothing here imports TensorFlow."""

from cmfl_jax.models.densenet import DenseNet, DenseNetSpec, count_params, densenet_spec
from cmfl_jax.models.detectors import (ARCHITECTURES, SOURCE, ModelConfig, OneStreamDetector,
                                       TwoStreamDetector, binary_heads, create_model)

__all__ = ["ARCHITECTURES", "DenseNet", "DenseNetSpec", "ModelConfig", "OneStreamDetector",
           "SOURCE", "TwoStreamDetector", "binary_heads", "count_params", "create_model",
           "densenet_spec"]
