"""The compiled steps of the smoke model: the parameter count, the CPU matmul
choice (which changes the products, not the results), the non-finite check's
semantics and the size of the program XLA compiles from it (compile time
grows with it)."""

import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmfl_jax import backend
from cmfl_jax.training import losses, steps
from helpers import SMOKE


def test_param_count_counts_the_trainable_parameters():
  import importlib.util

  from flax import nnx

  from cmfl_jax import models
  from cmfl_jax.training import losses, steps
  spec = importlib.util.spec_from_file_location("smoke", SMOKE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  state, programs = steps.create_train_state(module.get_config(), steps.make_mesh())
  model = nnx.merge(programs.train_graphdef, state.params, state.batch_stats)
  assert models.count_params(state.params) == models.count_params(model) > 0


def test_cpu_matmul_choice_changes_the_products_not_the_results():
  import re
  import runpy

  import jax
  import jax.numpy as jnp

  from cmfl_jax import backend, models
  from cmfl_jax.training import losses, steps
  config, mesh = runpy.run_path(SMOKE)["get_config"](), steps.make_mesh()
  state, programs = steps.create_train_state(config, mesh)
  batch = {"image": np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
           "label": np.arange(8, dtype=np.int32) % 2, "mask": np.ones(8, bool)}
  outputs, texts = {}, {}
  for choice in backend.CPU_MATMUL:
    config.model.cpu_matmul = choice
    options = backend.step_compiler_options(models.ModelConfig.from_config(config.model), mesh)
    train_fn, eval_fn = steps.compile_steps(programs, losses.LossConfig.from_config(config.loss),
                                            mesh, state, options)
    for kind, fn in (("eval", eval_fn), ("train", train_fn)):
      compiled = fn.lower(state, batch).compile()
      fresh = jax.tree.map(jnp.copy, state)  # the train step donates its input
      out = compiled(fresh, batch)
      if kind == "train":  # the loss and BN statistics; Adam's first update is
        out = (out[1], out[0].batch_stats)  # ~lr * sign(grad), even for a ~0 gradient
      texts[kind, choice], outputs[kind, choice] = compiled.as_text(), out

  def in_ynn_fusions(text):
    """The bodies of the computations that YNNPACK fusions call."""
    called = set(re.findall(r"%ynn_fusion[\w.]* = .*calls=%([\w.\-]+)", text))
    bodies = re.split(r"\n(?=\S)", text)
    return "\n".join(b for b in bodies if b.split(" ")[0].lstrip("%") in called)

  # "eigen": no product in YNNPACK, only the training step's reductions.
  assert "ynn_fusion" not in texts["eval", "eigen"]
  assert " reduce(" in in_ynn_fusions(texts["train", "eigen"])
  assert " dot(" not in in_ynn_fusions(texts["train", "eigen"])
  assert " dot(" in in_ynn_fusions(texts["train", "ynnpack"])
  assert " dot(" in in_ynn_fusions(texts["eval", "ynnpack"])
  for kind in ("train", "eval"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 outputs[kind, "eigen"], outputs[kind, "ynnpack"])
  config.model.cpu_matmul = "mkl"
  with pytest.raises(ValueError, match="cpu_matmul"):
    models.ModelConfig.from_config(config.model)
  with pytest.raises(ValueError, match="cpu_matmul"):
    backend.cpu_matmul_in_effect("mkl", "cpu")


def test_cpu_matmul_is_ignored_where_xla_lacks_the_option(monkeypatch):
  from cmfl_jax import backend, models
  from cmfl_jax.training import losses, steps
  model = models.ModelConfig(cpu_matmul="eigen")
  train_options, eval_options = backend.step_compiler_options(model, steps.make_mesh())
  assert train_options and eval_options == {"xla_cpu_experimental_ynn_fusion_type": ""}
  monkeypatch.setattr(backend, "_xla_cpu_knows_ynn_option", lambda: False)  # e.g. jax 0.7
  assert backend.step_compiler_options(model, steps.make_mesh()) == (None, None)
  assert backend.cpu_matmul_in_effect("eigen", "cpu") == "xla-default"
  assert backend.cpu_matmul_in_effect("eigen", "gpu") is None


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
  train_fn, _ = steps.compile_steps(programs, losses.LossConfig.from_config(config.loss), mesh,
                                    state, backend.step_compiler_options(programs.model, mesh))
  size = config.data.image_size
  batch = {"image": jax.ShapeDtypeStruct((8, size, size, 3), np.uint8),
           "label": jax.ShapeDtypeStruct((8,), np.int32)}
  hlo = train_fn.lower(state, batch).compile().as_text()
  leaves = len(jax.tree.leaves(state))
  scalar_ands = hlo.count("pred[] and(")
  assert len(jax.tree.leaves(state.params)) > 40  # enough leaves for a quadratic term to show
  assert scalar_ands <= 2 * leaves, (scalar_ands, leaves)
