"""Open-set rejection: "none of the generators we know".

The rule is the energy score, ``logsumexp`` of the attribution logits (Liu et
al., NeurIPS 2020), thresholded so that a fixed share of the dev split's
known-class images is accepted. Why energy and not the others:
- it needs nothing but the head's logits, so the export and the service
  compute it inside the compiled function, with no stored embeddings;
- unlike the maximum softmax probability it keeps the logits' magnitude,
  which is what falls for inputs far from every class (Vaze et al., ICLR
  2022: the max logit, of which energy is the smooth form, beats MSP);
- distances to class means need a covariance of the fused embedding fitted
  on the dev split, unstable with a few hundred dev images per class.
The evaluation reports the maximum softmax's AUROC beside it, so the choice
is checked on every run.

The dev split holds no unseen generator, so the threshold cannot be tuned
for rejection; it is set by the acceptance of known images
(`attribution.known_acceptance`, the open-set analogue of a fixed BPCER).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from cmfl_jax.attribution.classes import UNSEEN

UNKNOWN = "unknown"
#: The decision as predict's rows and columns, the service's JSON and the
#: export's outputs name it (`Model.heads` of predict carries INDEX and CONFIDENCE).
GENERATOR = "generator"                    # class name or UNKNOWN
INDEX = "generator_index"                  # int32 class index, UNSEEN = unknown
CONFIDENCE = "generator_confidence"        # softmax probability of the argmax class
PROBS = "source_probs"                     # softmax over the classes [B, K]


def energy(logits: np.ndarray) -> np.ndarray:
  """``logsumexp`` over classes: high = close to a known class."""
  return special.logsumexp(np.asarray(logits, np.float64), axis=-1)


def max_softmax(logits: np.ndarray) -> np.ndarray:
  """The largest class probability (the baseline rule)."""
  return special.softmax(np.asarray(logits, np.float64), axis=-1).max(axis=-1)


#: Rule name -> known-ness score from logits [N, K] (higher = known).
RULES = {"energy": energy, "max_softmax": max_softmax}
#: The same rules inside a compiled function (float32; the export decides with them).
JAX_RULES = {"energy": lambda logits: jax.nn.logsumexp(logits, axis=-1),
             "max_softmax": lambda logits: jax.nn.softmax(logits, axis=-1).max(axis=-1)}


def fit(logits: np.ndarray, sources: np.ndarray, classes: Sequence[str],
        acceptance: float, rule: str = "energy") -> dict[str, Any]:
  """The rule's threshold accepting `acceptance` of the known-class dev images
  (UNSEEN rows, if any, are ignored); stored with the checkpoint."""
  if rule not in RULES:
    raise ValueError(f"unknown open-set rule {rule!r}; choose from {tuple(RULES)}")
  if not 0.0 < acceptance <= 1.0:
    raise ValueError(f"attribution.known_acceptance must be in (0, 1], got {acceptance}")
  known = np.asarray(sources) != UNSEEN
  scores = RULES[rule](np.asarray(logits)[known])
  if not len(scores):
    raise ValueError("no known-class dev images to fit the open-set threshold on")
  # The lower (1 - acceptance) quantile: at least `acceptance` of dev scores are >= it.
  threshold = float(np.quantile(scores, 1.0 - acceptance, method="lower"))
  return {"classes": list(classes), "rule": rule, "threshold": threshold,
          "known_acceptance": float(acceptance), "dev_images": int(known.sum())}


def decide(logits: np.ndarray, fitted: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """(class index or UNSEEN for "unknown", softmax confidence of the argmax)."""
  logits = np.asarray(logits, np.float64)
  probs = special.softmax(logits, axis=-1)
  best = probs.argmax(axis=-1)
  known = RULES[fitted["rule"]](logits) >= fitted["threshold"]
  return np.where(known, best, UNSEEN).astype(np.int32), probs.max(axis=-1)


def decide_jax(logits: jax.Array, fitted: Mapping[str, Any]
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`decide` traced into a compiled function, so an exported model needs no
  Python to say "unknown": (int32 index or UNSEEN, confidence, softmax [B, K]).
  In float32: only an image whose score is within rounding of the threshold
  can be decided otherwise than by `decide`."""
  probs = jax.nn.softmax(logits, axis=-1)
  known = JAX_RULES[fitted["rule"]](logits) >= fitted["threshold"]
  index = jnp.where(known, jnp.argmax(logits, axis=-1), UNSEEN).astype(jnp.int32)
  return index, probs.max(axis=-1), probs


def names(decisions: np.ndarray, classes: Sequence[str]) -> list[str]:
  """Class names of `decide`'s indices ("unknown" for UNSEEN)."""
  return [UNKNOWN if d == UNSEEN else classes[d] for d in decisions]


def answers(outputs: Mapping[str, np.ndarray], classes: Sequence[str], count: int
            ) -> list[dict[str, Any]]:
  """Per image {GENERATOR: name or "unknown", CONFIDENCE: float} from decided
  outputs (INDEX, CONFIDENCE); `count` empty dicts without classes (no head),
  so that callers add the fields only where the head exists."""
  if not classes:
    return [{} for _ in range(count)]
  return [{GENERATOR: name, CONFIDENCE: float(c)}
          for name, c in zip(names(outputs[INDEX], classes), outputs[CONFIDENCE])]
