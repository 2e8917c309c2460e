"""PyTorch weights in, NNX weights out: ImageNet DenseNet init and checkpoints of
the official PyTorch code.

Two key layouts are understood, both with torchvision's module names:

* ``imagenet``: a DenseNet classifier's state dict (torchvision, also timm,
  whose DenseNet uses the same names) -- ``features.conv0.weight``,
  ``features.denseblock1.denselayer1.norm1.weight``, ``features.transition1.conv.weight``,
  ``classifier.*``. It initialises every stream of a detector; blocks after the
  stream's last kept block, ``norm5`` and the classifier are ignored, heads keep
  their initialisation.
* ``official``: the official code's ``MultiStreamDenseNet`` / ``OneStreamDenseNet``
  -- each stream is ``nn.Sequential(*densenet.features.children()[0:8])``, so
  keys are positional (``enc_rgb.0.weight`` = conv0, ``enc_rgb.4.denselayer1...``
  = denseblock1, ``enc_f.7.conv.weight`` = transition2), and the heads are
  ``linear`` (joint), ``linear_rgb`` and ``linear_f``. Every key must match.

Names are derived by walking the NNX model (any `DenseNetSpec`, any number of
kept blocks), not from per-preset lists. Loading is strict: missing,
unexpected and mis-shaped keys are reported together in one `WeightsError`.
`.safetensors` files are read with NumPy only; `.pth`/`.pt` pickles too, by
`models.pth_reader`, which (as ``torch.load(weights_only=True)``) refuses
anything but tensors and plain containers, so a file cannot run code.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from cmfl_jax.models import densenet, detectors, pth_reader

IMAGENET = "imagenet"
OFFICIAL = "official"
FORMATS = (IMAGENET, OFFICIAL)

# Official module names of the detector parts (a Head's nnx.Linear maps to the
# named torch nn.Linear itself).
_OFFICIAL_NAMES = {"rgb_stream": "enc_rgb", "freq_stream": "enc_f", "stream": "enc_rgb",
                   "rgb_head": "linear_rgb", "freq_head": "linear_f", "joint_head": "linear",
                   "head": "linear_rgb"}
# Pre-0.3 torchvision checkpoints spell `norm1` as `norm.1` inside dense layers.
_LEGACY_DENSE_LAYER = re.compile(r"(denselayer\d+\.(?:norm|conv))\.([12])\.")
_TOP_LEVEL_PART = re.compile(r"(denseblock|transition)(\d+)")
_MAX_LISTED = 40


class WeightsError(ValueError):
  """A weights file does not fit the model (the message lists the keys)."""


@dataclasses.dataclass(frozen=True)
class _Slot:
  """One NNX variable filled from one torch tensor: nnx = transpose(torch, perm)."""

  variable: nnx.Variable
  perm: tuple[int, ...]

  @property
  def torch_shape(self) -> tuple[int, ...]:
    shape = self.variable.get_value().shape
    inverse = np.argsort(self.perm)
    return tuple(shape[i] for i in inverse)


_IDENTITY = (0,)
# torch parameter/buffer name -> (NNX attribute, permutation torch -> NNX layout).
_LEAVES: tuple[tuple[type, dict[str, tuple[str, tuple[int, ...]]]], ...] = (
    # Convolutions: torch OIHW -> HWIO.
    (densenet.StemConv, {"weight": ("kernel", (2, 3, 1, 0))}),
    (densenet.PointwiseConv, {"weight": ("kernel", (2, 3, 1, 0))}),
    (densenet.Conv3x3, {"weight": ("kernel", (2, 3, 1, 0))}),
    (nnx.BatchNorm, {"weight": ("scale", _IDENTITY), "bias": ("bias", _IDENTITY),
                     "running_mean": ("mean", _IDENTITY), "running_var": ("var", _IDENTITY)}),
    (nnx.Linear, {"weight": ("kernel", (1, 0)), "bias": ("bias", _IDENTITY)}),  # (out,in)->(in,out)
)


# ----------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------
def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Tensors of a `.safetensors` file or a PyTorch pickle (`.pth`, `.pt`, ...).

  A pickle holding a dict with a ``state_dict`` entry (the official training
  code's checkpoints) yields that entry.
  """
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return dict(load_file(path))
  try:
    obj = pth_reader.load(path)
  except pth_reader.PthError as e:  # "refusing to load ..." when it would run code
    raise WeightsError(str(e)) from e
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
  not_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, np.ndarray))
  if not_tensors:
    raise WeightsError(f"{path}: entries that are not tensors: {_listing(not_tensors)}")
  out = {}
  for key, array in obj.items():
    floating = jnp.issubdtype(array.dtype, jnp.floating)
    out[key] = array.astype(np.float32, copy=False) if floating else array
  return out


def normalize_keys(tensors: Mapping[str, Any]) -> dict[str, Any]:
  """Canonical names: no ``module.`` (DataParallel) or ``features.`` prefix,
  current torchvision dense-layer names, no ``num_batches_tracked`` counters."""
  out = {}
  for key, value in tensors.items():
    if key.endswith("num_batches_tracked"):
      continue
    while key.startswith("module."):
      key = key[len("module."):]
    key = key.removeprefix("features.")
    out[_LEGACY_DENSE_LAYER.sub(r"\1\2.", key)] = value
  return out


def detect_format(tensors: Mapping[str, Any]) -> str:
  """`OFFICIAL` if the (normalised) keys have the official detectors' streams."""
  official = any(k.split(".")[0] in ("enc_rgb", "enc_f") for k in tensors)
  return OFFICIAL if official else IMAGENET


# ----------------------------------------------------------------------------
# Model -> torch names
# ----------------------------------------------------------------------------
def _torchvision_name(path: tuple) -> str:
  """Path of a layer inside a `densenet.DenseNet` -> torchvision `features` name."""
  if path[0] == "blocks":
    _, block, _, layer, leaf = path
    return f"denseblock{block + 1}.denselayer{layer + 1}.{leaf}"
  if path[0] == "transitions":
    _, block, leaf = path
    return f"transition{block + 1}.{leaf}"
  return ".".join(map(str, path))  # conv0, norm0, norm5


def _sequential_name(name: str, total_blocks: int) -> str:
  """torchvision `features` name -> its index in `nn.Sequential(*features.children())`.

  Children: conv0, norm0, relu0, pool0, then denseblock k at 2k+2 and
  transition k at 2k+3, and norm5 last.
  """
  top, _, rest = name.partition(".")
  part = _TOP_LEVEL_PART.fullmatch(top)
  if part:
    index = 2 * int(part[2]) + (2 if part[1] == "denseblock" else 3)
  else:
    index = {"conv0": 0, "norm0": 1, "norm5": 2 * total_blocks + 3}[top]
  return f"{index}.{rest}" if rest else str(index)


def _module_name(model: nnx.Module, path: tuple, fmt: str) -> str | None:
  """torch module name of the layer at `path` of a detector (None: not loaded)."""
  owner = getattr(model, path[0])
  if isinstance(owner, densenet.DenseNet):
    name = _torchvision_name(path[1:])
    if fmt == IMAGENET:
      return name
    return f"{_OFFICIAL_NAMES[path[0]]}.{_sequential_name(name, len(owner.spec.block_config))}"
  if isinstance(owner, detectors.Head) and fmt == OFFICIAL:
    return _OFFICIAL_NAMES[path[0]]
  return None


def torch_slots(model: nnx.Module, fmt: str) -> dict[str, list[_Slot]]:
  """torch key -> the NNX variables it fills (two for ImageNet init of two streams)."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown weights format {fmt!r}; choose from {FORMATS}")
  slots: dict[str, list[_Slot]] = {}
  for path, module in nnx.iter_modules(model):
    leaves = next((l for cls, l in _LEAVES if isinstance(module, cls)), None)
    if leaves is None:
      continue
    name = _module_name(model, path, fmt)
    if name is None:
      continue
    for torch_leaf, (attr, perm) in leaves.items():
      variable = getattr(module, attr, None)
      if variable is not None:
        slots.setdefault(f"{name}.{torch_leaf}", []).append(_Slot(variable, perm))
  return slots


# ----------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------
def _listing(keys: list[str]) -> str:
  """Every key, one a line; long lists grouped by top-level module."""
  if len(keys) <= _MAX_LISTED:
    return "".join(f"\n  {k}" for k in keys)
  groups: dict[str, list[str]] = {}
  for k in keys:
    groups.setdefault(k.split(".")[0], []).append(k)
  return "".join(f"\n  {top}.* ({len(g)}): {', '.join(g[:3])}{', ...' if len(g) > 3 else ''}"
                 for top, g in groups.items())


def _ignored(key: str, model_parts: set[str]) -> bool:
  """ImageNet keys outside the truncated stream: the classifier, later blocks, norm5."""
  top = key.split(".")[0]
  return top == "classifier" or (
      top not in model_parts and (top == "norm5" or _TOP_LEVEL_PART.fullmatch(top) is not None))


def load_into(model: nnx.Module, tensors: Mapping[str, Any], fmt: str | None = None,
              source: str = "weights") -> int:
  """Copies `tensors` (torch names and layouts) into `model`'s variables in place.

  Args:
    model: a `TwoStreamDetector` or `OneStreamDetector`; its variables may be
      abstract (`nnx.eval_shape`), those filled become arrays.
    tensors: torch state dict as NumPy arrays (see `read_state_dict`).
    fmt: `IMAGENET` or `OFFICIAL`; detected from the keys if None.
    source: file name for error messages.

  Returns:
    The number of tensors read.

  Raises:
    WeightsError: listing every missing, unexpected and mis-shaped key.
  """
  tensors = normalize_keys(tensors)
  detected = detect_format(tensors)
  fmt = fmt or detected
  slots = torch_slots(model, fmt)
  if fmt == IMAGENET:
    parts = {k.split(".")[0] for k in slots}
    tensors = {k: v for k, v in tensors.items() if not _ignored(k, parts)}
  missing = sorted(slots.keys() - tensors.keys())
  unexpected = sorted(tensors.keys() - slots.keys())
  mismatched = sorted(
      f"{k}: file {tuple(np.shape(tensors[k]))}, model {slots[k][0].torch_shape}"
      for k in slots.keys() & tensors.keys()
      if tuple(np.shape(tensors[k])) != slots[k][0].torch_shape)
  if missing or unexpected or mismatched:
    lines = [f"{source} does not fit the {type(model).__name__} ({fmt} key layout; keys "
             "shown without module./features. prefixes):"]
    if detected != fmt:
      lines.append(f"(its keys look like the {detected} layout)")
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatches (torch layout)", mismatched)):
      if keys:
        lines.append(f"{len(keys)} {title}:{_listing(keys)}")
    raise WeightsError("\n".join(lines))
  for key, targets in slots.items():
    for slot in targets:
      dtype = slot.variable.get_value().dtype
      slot.variable.set_value(jnp.asarray(np.transpose(tensors[key], slot.perm), dtype))
  return len(slots)


def load_state(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State,
               tensors: Mapping[str, Any], fmt: str | None = None,
               source: str = "weights") -> tuple[nnx.State, nnx.State]:
  """`(params, batch_stats)` (as in `steps.TrainState`) with `tensors` loaded.

  The given states may be concrete or abstract (`jax.ShapeDtypeStruct`s with
  shardings, when every variable comes from the file); the result is placed
  with their shardings.
  """
  model = nnx.merge(graphdef, params, batch_stats, copy=True)
  count = load_into(model, tensors, fmt, source)
  logging.info("loaded %d tensors from %s", count, source)
  _, new_params, new_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  shardings = jax.tree.map(lambda x: x.sharding, (params, batch_stats))
  return jax.device_put((new_params, new_stats), shardings)


def init_from_file(state: Any, graphdef: nnx.GraphDef, path: str, fmt: str | None = None) -> Any:
  """`state` (a fresh `steps.TrainState`) with params and BatchNorm statistics from `path`.

  ImageNet files fill the streams only; official checkpoints fill everything
  (fine-tuning). The optimizer state is kept: Adam's zero moments do not
  depend on the parameter values.
  """
  params, batch_stats = load_state(graphdef, state.params, state.batch_stats,
                                   read_state_dict(path), fmt, source=path)
  return state.replace(params=params, batch_stats=batch_stats)
