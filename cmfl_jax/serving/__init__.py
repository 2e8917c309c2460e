"""The scoring service (`python -m cmfl_jax.serve`): an aiohttp app, a
dynamic batcher in front of the compiled model, and the upload limits."""
