"""Models: the DenseNet stream (`densenet`), its CPU kernels (`kernels`), the
spectrum input (`spectrum`) and the detectors with their typed config
(`detectors`). Nothing here imports TensorFlow."""

from cmfl_jax.models.densenet import DenseNet, DenseNetSpec, count_params, densenet_spec
from cmfl_jax.models.detectors import (ARCHITECTURES, ModelConfig, OneStreamDetector,
                                       TwoStreamDetector, create_model)

__all__ = ["ARCHITECTURES", "DenseNet", "DenseNetSpec", "ModelConfig", "OneStreamDetector",
           "TwoStreamDetector", "count_params", "create_model", "densenet_spec"]
