"""cmfl_jax: multi-channel (RGB + spectrum) synthetic face detection with
Cross Modal Focal Loss, in JAX / Flax NNX.

Label convention everywhere: 1 = bona fide (real), 0 = attack (synthetic);
every head predicts P(real).
"""

__version__ = "0.1.0"
