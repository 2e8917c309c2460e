"""BCE and Cross Modal Focal Loss (George & Marcel, CVPR 2021), from logits.

The published definitions are in probability space (``p = sigmoid(logit)``).
Here every quantity is derived from logits with `softplus`, so the values and
gradients equal the probability-space formulas wherever those are finite and
stay finite where a float32 ``log(sigmoid(x))`` would overflow to inf.

Labels: 1 = bona fide (real), 0 = attack (synthetic); heads predict P(real).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from cmfl_jax.models.detectors import SOURCE

def bce_per_example(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """``-(y log p + (1 - y) log(1 - p))`` with p = sigmoid(logits), elementwise."""
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    logits = logits.astype(jnp.float32)
  labels = jnp.asarray(labels, logits.dtype)
  # -log p = softplus(-x), -log(1 - p) = softplus(x).
  return labels * jax.nn.softplus(-logits) + (1.0 - labels) * jax.nn.softplus(logits)


def bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean binary cross-entropy of logits against {0, 1} (or soft) labels."""
  return jnp.mean(bce_per_example(logits, labels))


def cmfl_per_example(
    logits_a: jax.Array,
    logits_b: jax.Array,
    labels: jax.Array,
    alpha: float = 1.0,
    gamma: float = 3.0,
    multiplier: float = 2.0,
    eps: float = 1e-9,
) -> jax.Array:
  """Cross Modal Focal Loss between two heads a and b, per example.

  ``pt = exp(-BCE)`` is the probability of the true class; each head's BCE is
  down-weighted by ``(1 - w)^gamma`` where ``w`` grows when *both* heads are
  confident (harmonic-mean style), so one modality cannot dominate. Gradients
  flow through the weights, as in the official code (no stop-gradient).
  The published loss is the batch mean of this (`cmfl`).
  """
  bce_a = bce_per_example(logits_a, labels)
  bce_b = bce_per_example(logits_b, labels)
  pt_a = jnp.exp(-bce_a)
  pt_b = jnp.exp(-bce_b)
  harmonic = multiplier * pt_a * pt_b / (pt_a + pt_b + eps)
  w_a = (pt_b + eps) * harmonic
  w_b = (pt_a + eps) * harmonic
  loss_a = alpha * (1.0 - w_a) ** gamma * bce_a
  loss_b = alpha * (1.0 - w_b) ** gamma * bce_b
  return 0.5 * loss_a + 0.5 * loss_b


def cmfl(logits_a: jax.Array, logits_b: jax.Array, labels: jax.Array, **kwargs) -> jax.Array:
  """``0.5 * mean(L_a) + 0.5 * mean(L_b)``: the published CMFL (kwargs as above)."""
  return jnp.mean(cmfl_per_example(logits_a, logits_b, labels, **kwargs))


def objective_per_example(
    name: str,
    outputs: Mapping[str, jax.Array],
    labels: jax.Array,
    *,
    alpha: float = 1.0,
    gamma: float = 3.0,
    multiplier: float = 2.0,
    sources: jax.Array | None = None,
    source_weights: jax.Array | None = None,
    attribution_weight: float = 0.0,
) -> dict[str, jax.Array]:
  """Per-example terms of a training objective over a detector's head logits.

  Every published objective is a batch mean of per-example terms, so masked
  (padded) evaluation batches and sums across hosts stay exact.

  Args:
    name: ``"cmfl"`` (the proposed model: ``0.5 * CMFL(rgb, freq) + 0.5 *
      BCE(joint)``, needs a two_stream model) or ``"bce"`` (baselines: BCE on the
      ``joint`` head, which one_stream models also expose).
    outputs: head name -> logits ``[B]``; always has ``joint``, two_stream
      models also ``rgb`` and ``freq``.
    labels: ``[B]`` with 1 = bona fide.
    sources: ``[B]`` attribution class indices (-1: not a class, no term),
      used when `outputs` has the attribution head's logits ("source").
    source_weights: ``[B]`` per-example weights of the attribution term
      (class balance; None: 1).
    attribution_weight: the attribution term's weight in "loss".

  Returns:
    ``{"loss": [B], "bce_<head>": [B] for every P(real) head, "cmfl": [B] for
    cmfl, and with the attribution head "attribution_ce" and "detection_loss"
    (the loss without the attribution term): [B]}``.
  """
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; choose one of {tuple(OBJECTIVES)}")
  outputs = dict(outputs)
  source_logits = outputs.pop(SOURCE, None)
  terms = {f"bce_{head}": bce_per_example(logits, labels) for head, logits in outputs.items()}
  terms.update(OBJECTIVES[name](outputs, labels, terms, alpha=alpha, gamma=gamma,
                                multiplier=multiplier))
  if source_logits is not None and sources is not None:
    ce = source_cross_entropy(source_logits, sources)
    terms["attribution_ce"] = ce if source_weights is None else ce * source_weights
    terms["detection_loss"] = terms["loss"]  # what keep-best validates on
    terms["loss"] = terms["loss"] + attribution_weight * terms["attribution_ce"]
  return terms


def source_cross_entropy(logits: jax.Array, sources: jax.Array) -> jax.Array:
  """Softmax cross-entropy of the attribution head per example; 0 where the
  source is -1 (an image of no class, e.g. an unseen generator in evaluation)."""
  known = sources >= 0
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(known, sources, 0))
  return jnp.where(known, ce, 0.0)


def _bce_objective(outputs, labels, terms, **unused) -> dict[str, jax.Array]:
  del outputs, labels, unused
  return {"loss": terms["bce_joint"]}


def _cmfl_objective(outputs, labels, terms, *, alpha, gamma, multiplier) -> dict[str, jax.Array]:
  if "rgb" not in outputs or "freq" not in outputs:
    raise ValueError("objective 'cmfl' needs a two_stream model (heads rgb, freq, joint); "
                     f"got heads {sorted(outputs)}")
  cmfl_terms = cmfl_per_example(outputs["rgb"], outputs["freq"], labels, alpha=alpha,
                                gamma=gamma, multiplier=multiplier)
  return {"cmfl": cmfl_terms, "loss": 0.5 * cmfl_terms + 0.5 * terms["bce_joint"]}


#: Training objectives by name -> extra per-example terms (with "loss").
OBJECTIVES = {"cmfl": _cmfl_objective, "bce": _bce_objective}


def objective(name: str, outputs: Mapping[str, jax.Array], labels: jax.Array,
              **kwargs) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Batch-mean objective: ``(loss, {term: mean})`` (see `objective_per_example`)."""
  terms = {k: jnp.mean(v) for k, v in objective_per_example(name, outputs, labels, **kwargs).items()}
  return terms.pop("loss"), terms


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """`config.loss` as typed values, made once at the boundary
  (`from_config`), so the steps' signatures say what they use of it."""

  objective: str = "cmfl"
  alpha: float = 1.0
  gamma: float = 3.0
  multiplier: float = 2.0
  attribution_weight: float = 0.0  # configs written before the attribution head lack it

  @classmethod
  def from_config(cls, loss: Mapping[str, Any]) -> "LossConfig":
    """Validates `config.loss` (the objective's name; the weights as floats)."""
    objective = str(loss.get("objective", cls.objective))
    if objective not in OBJECTIVES:
      raise ValueError(f"loss.objective must be one of {tuple(OBJECTIVES)}, got {objective!r}")
    return cls(objective, *(float(loss.get(f.name, f.default))
                            for f in dataclasses.fields(cls)[1:]))

  def terms(self) -> dict[str, float]:
    """The keyword arguments of `objective_per_example` taken from the config."""
    return {"alpha": self.alpha, "gamma": self.gamma, "multiplier": self.multiplier,
            "attribution_weight": self.attribution_weight}

