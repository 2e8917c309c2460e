"""Train state and the pure, jit-compiled train/eval steps over a device mesh.

The steps are pure functions `(state, batch) -> ...` compiled with `jax.jit`
and explicit NamedShardings: the batch is split over the mesh's "data" axis,
the state is replicated (a "model" axis could shard it later), and the state
buffers are donated. BatchNorm statistics are means over the global (sharded)
batch, so XLA inserts the cross-device reductions. Nothing here touches files
or TensorFlow, so the steps run (and are benchmarked) wherever JAX runs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cmfl_jax import backend, models
from cmfl_jax.attribution import classes as attribution_classes
from cmfl_jax.training import losses

DATA_AXIS = "data"


@struct.dataclass
class TrainState:
  """Everything a step reads or writes; a pytree, saved whole by Orbax."""

  step: jax.Array              # number of optimizer updates applied
  params: Any                  # nnx.State of nnx.Param
  batch_stats: Any             # nnx.State of nnx.BatchStat (BN running stats)
  opt_state: Any
  rng: jax.Array               # uint32 key data, advanced every step
  nonfinite_step: jax.Array    # -1, or the first step whose loss/grad was not finite


# ----------------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------------
def make_mesh() -> Mesh:
  """1-D data-parallel mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split along their leading axis over the mesh's data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """PyTorch `Adam(weight_decay=wd)`: L2 added to the gradient *before* Adam."""
  return optax.chain(
      optax.add_decayed_weights(optim.weight_decay),
      optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
      optax.scale_by_learning_rate(optim.learning_rate),
  )


@struct.dataclass
class Programs:
  """Static pieces shared by the steps: graph definitions and the optimizer."""

  model: models.ModelConfig = struct.field(pytree_node=False)
  train_graphdef: Any = struct.field(pytree_node=False)
  eval_graphdef: Any = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)


def _init_state(config: ml_collections.ConfigDict, model_config: models.ModelConfig
                ) -> tuple[TrainState, Programs]:
  model = models.create_model(model_config, rngs=nnx.Rngs(config.seed))
  model.eval()
  eval_graphdef = nnx.split(model, nnx.Param, nnx.BatchStat)[0]
  model.train()
  train_graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  tx = make_optimizer(config.optim)
  return fresh_state(params, batch_stats, tx, config.seed), Programs(
      model_config, train_graphdef, eval_graphdef, tx)


def fresh_state(params: Any, batch_stats: Any, tx: optax.GradientTransformation,
                seed: int) -> TrainState:
  """A state at step 0 around given weights (random init, pretrained, converted)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(seed + 1)),
                    nonfinite_step=jnp.full((), -1, jnp.int32))


def create_train_state(config: ml_collections.ConfigDict, mesh: Mesh,
                       abstract: bool = False) -> tuple[TrainState, Programs]:
  """Initial state, replicated over the mesh (identical on every host).

  With `abstract=True` only shapes/dtypes/shardings are returned (for
  restoring a checkpoint without computing an initialisation). `config.model`
  becomes a typed `ModelConfig` here, for the mesh's platform.
  """
  model_config = models.ModelConfig.from_config(config.model, backend.platform(mesh),
                                                attribution_classes.num_sources(config))
  replicated = NamedSharding(mesh, P())
  programs: list[Programs] = []

  def init():
    state, progs = _init_state(config, model_config)
    programs.append(progs)
    return state

  shapes = jax.eval_shape(init)
  shardings = jax.tree.map(lambda _: replicated, shapes)
  if abstract:
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                         shapes, shardings)
  else:
    state = jax.jit(init, out_shardings=shardings)()
  return state, programs[0]


# ----------------------------------------------------------------------------
# Steps (pure)
# ----------------------------------------------------------------------------
def _forward_terms(graphdef, params, batch_stats, batch, loss_config: losses.LossConfig):
  model = nnx.merge(graphdef, params, batch_stats, copy=True)
  outputs = model(batch["image"])
  terms = losses.objective_per_example(
      loss_config.objective, outputs, batch["label"].astype(jnp.float32),
      sources=batch.get("source"), source_weights=batch.get("source_weight"),
      **loss_config.terms())
  return model, outputs, terms


def all_finite(loss: jax.Array, grads: Any) -> jax.Array:
  """Whether the loss and every gradient entry are finite: one boolean scalar.

  The per-leaf flags are counted by a dot product, not AND-ed in a chain:
  XLA fuses a chain of scalar ANDs into every consumer, here each of the
  state's ~900 selects, which made the paper model's optimised train step
  51 MB of HLO and its compilation 4x slower (BENCHMARKS.md, "Compile time");
  XLA never fuses a dot into its consumers (as `kernels._materialize`).
  """
  flags = jnp.stack([jnp.all(jnp.isfinite(x)) for x in [loss, *jax.tree.leaves(grads)]])
  flags = flags.astype(jnp.float32)
  return flags @ jnp.ones_like(flags) == flags.size


def train_step(state: TrainState, batch: dict, *, programs: Programs,
               loss_config: losses.LossConfig) -> tuple[TrainState, dict]:
  """One optimizer update. A non-finite loss or gradient leaves the state
  unchanged and records the step in `nonfinite_step` (checked by the host)."""

  def loss_fn(params):
    model, _, terms = _forward_terms(programs.train_graphdef, params, state.batch_stats,
                                     batch, loss_config)
    means = {k: jnp.mean(v) for k, v in terms.items()}
    return means["loss"], (means, nnx.state(model, nnx.BatchStat))

  (loss, (step_metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = programs.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = all_finite(loss, grads)
  ok = finite & (state.nonfinite_step < 0)
  new = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                   opt_state=opt_state, rng=jax.random.key_data(
                       jax.random.split(jax.random.wrap_key_data(state.rng))[0]),
                   nonfinite_step=state.nonfinite_step)
  new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
  first_bad = (~finite) & (state.nonfinite_step < 0)
  new = new.replace(nonfinite_step=jnp.where(first_bad, state.step + 1, state.nonfinite_step))
  return new, step_metrics


def eval_step(state: TrainState, batch: dict, *, programs: Programs,
              loss_config: losses.LossConfig) -> tuple[dict, dict]:
  """Masked loss sums (eval-mode BN) and per-example P(real) of every head
  (with the attribution head: its logits [B, K] under `models.SOURCE`)."""
  _, outputs, terms = _forward_terms(programs.eval_graphdef, state.params, state.batch_stats,
                                     batch, loss_config)
  mask = batch["mask"]
  sums = {k: jnp.sum(jnp.where(mask, v, 0.0)) for k, v in terms.items()}
  sums["count"] = jnp.sum(mask.astype(jnp.float32))
  probs = {head: jax.nn.sigmoid(logits) for head, logits in models.binary_heads(outputs).items()}
  if models.SOURCE in outputs:
    probs[models.SOURCE] = outputs[models.SOURCE]
  return sums, probs


def compile_steps(programs: Programs, loss_config: losses.LossConfig, mesh: Mesh,
                  state: TrainState, compiler_options: tuple[dict | None, dict | None] = (None, None)
                  ) -> tuple[Callable, Callable]:
  """jit-compiled train/eval steps with explicit shardings and donation;
  `compiler_options` (train, eval) come from `backend.step_compiler_options`."""
  train_options, eval_options = compiler_options
  replicated = NamedSharding(mesh, P())
  batches = batch_sharding(mesh)
  state_sharding = jax.tree.map(lambda _: replicated, state)
  train = jax.jit(functools.partial(train_step, programs=programs, loss_config=loss_config),
                  in_shardings=(state_sharding, batches),
                  out_shardings=(state_sharding, replicated), donate_argnums=(0,),
                  compiler_options=train_options)
  evaluate = jax.jit(functools.partial(eval_step, programs=programs, loss_config=loss_config),
                     in_shardings=(state_sharding, batches),
                     out_shardings=(replicated, batches),
                     compiler_options=eval_options)
  return train, evaluate
