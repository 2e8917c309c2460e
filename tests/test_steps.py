"""The compiled steps: the non-finite check's semantics and the size of the
program XLA compiles from it (compile time grows with it)."""

import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmfl_jax import backend, steps
from helpers import SMOKE


@pytest.mark.parametrize("where", ["none", "loss", "first_leaf", "last_leaf", "inf"])
def test_all_finite_flags_any_non_finite_entry(where):
  grads = {"a": jnp.ones((3, 2)), "b": [jnp.zeros(4), jnp.ones(())], "c": jnp.ones((2, 2, 2))}
  loss = jnp.float32(0.5)
  if where == "loss":
    loss = jnp.float32(np.nan)
  elif where == "first_leaf":
    grads["a"] = grads["a"].at[1, 1].set(np.nan)
  elif where == "last_leaf":
    grads["c"] = grads["c"].at[1, 0, 1].set(np.nan)
  elif where == "inf":
    grads["b"][0] = grads["b"][0].at[2].set(-np.inf)
  assert bool(jax.jit(steps.all_finite)(loss, grads)) == (where == "none")


def test_finite_check_is_not_recomputed_in_every_state_update():
  """One flag, computed once: were the per-leaf flags AND-ed in a chain, XLA
  would fuse the chain into each of the state's selects (one scalar `and` per
  gradient leaf in each of them: quadratic in the number of leaves)."""
  config = runpy.run_path(SMOKE)["get_config"]()
  mesh = steps.make_mesh()
  state, programs = steps.create_train_state(config, mesh, abstract=True)
  train_fn, _ = steps.compile_steps(programs, config.loss, mesh, state,
                                    backend.step_compiler_options(programs.model, mesh))
  size = config.data.image_size
  batch = {"image": jax.ShapeDtypeStruct((8, size, size, 3), np.uint8),
           "label": jax.ShapeDtypeStruct((8,), np.int32)}
  hlo = train_fn.lower(state, batch).compile().as_text()
  leaves = len(jax.tree.leaves(state))
  scalar_ands = hlo.count("pred[] and(")
  assert len(jax.tree.leaves(state.params)) > 40  # enough leaves for a quadratic term to show
  assert scalar_ands <= 2 * leaves, (scalar_ands, leaves)
