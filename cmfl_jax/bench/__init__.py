"""Benchmarks (`python -m cmfl_jax.bench`): compiled steps vs PyTorch (`step`),
input pipeline and end to end (`input`), alternating-round timing (`timing`),
the official architecture in PyTorch (`torch_reference`)."""
