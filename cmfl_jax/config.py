"""The whole config checked once, before any data is read or anything is
compiled, and command-line mistakes answered in one line.

`validate` names the key at fault and what is allowed; `parse_flags` is the
flag parser of every entry point: a missing or unloadable config file, an
unknown override key (with the closest valid keys), a value of the wrong type
all become `error: ...` on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import difflib
import re
import sys
from typing import Any, Sequence

from absl import flags

#: Choices of the string fields that are not validated by their owners.
CHOICES = {
    "data.balance": ("oversample", "truncate", "none"),
    "data.verify": ("decode", "header", "none"),
    "data.align": ("", "align", "box"),
    "data.align_policy": ("largest", "most_confident", "skip_multiple"),
}
USAGE_ERROR = 2
#: The entry points' config-file flags (ml_collections loads them lazily).
CONFIG_FLAGS = ("config", "baseline")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def _flat_keys(config: Any, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if hasattr(v, "items"):
      keys += _flat_keys(v, f"{prefix}{k}.")
  return keys


def closest_keys(config: Any, key: str, n: int = 3) -> list[str]:
  return difflib.get_close_matches(key, _flat_keys(config), n=n, cutoff=0.5)


def min_image_size(model: Any) -> int:
  """Smallest input the stream accepts: the stem and max pool halve twice,
  every kept transition once more."""
  transitions = min(model.num_blocks, len(model.spec.block_config) - 1)
  return 2 ** (2 + transitions)


def validate(config: Any, num_devices: int = 1, platform: str | None = None) -> None:
  """Raises ConfigError (naming the key) for the first setting that cannot work."""
  from cmfl_jax.data import ops, randomize, sources
  from cmfl_jax.models import ModelConfig
  from cmfl_jax.training import losses
  try:
    model = ModelConfig.from_config(config.model, platform)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  data, train = config.data, config.train
  if data.source not in sources.SOURCES:
    raise ConfigError(f"data.source must be one of {tuple(sources.SOURCES)}, got "
                      f"{data.source!r}")
  if config.loss.objective not in losses.OBJECTIVES:
    raise ConfigError(f"loss.objective must be one of {tuple(losses.OBJECTIVES)}, got "
                      f"{config.loss.objective!r}")
  if config.loss.objective == "cmfl" and model.arch != "two_stream":
    raise ConfigError("loss.objective='cmfl' needs model.arch='two_stream' (two heads); use "
                      "loss.objective='bce' for one_stream")
  for key, allowed in CHOICES.items():
    section, field = key.split(".")
    value = config[section][field]
    if value not in allowed:
      raise ConfigError(f"{key} must be one of {allowed}, got {value!r}")
  which = str(config.eval.checkpoint)
  if which not in ("best", "latest") and not which.isdigit():
    raise ConfigError(f"eval.checkpoint must be 'best', 'latest' or a step number, got {which!r}")
  for condition in config.eval.conditions:
    try:
      ops.parse_condition(condition)
    except ValueError as e:
      raise ConfigError(f"eval.conditions: {e}") from None
  unknown = sorted(set(config.eval.robustness_splits) - set(data.eval_splits))
  if unknown:
    raise ConfigError(f"eval.robustness_splits {unknown} are not in data.eval_splits")
  attribution = config.get("attribution")
  if attribution is not None and attribution.enabled:
    if model.arch != "two_stream":
      raise ConfigError("attribution.enabled needs model.arch='two_stream' (the head reads the "
                        "fused embedding of both streams)")
    if not 0.0 < attribution.known_acceptance <= 1.0:
      raise ConfigError(f"attribution.known_acceptance must be in (0, 1], got "
                        f"{attribution.known_acceptance}")
    if attribution.min_train_images < 1:
      raise ConfigError(f"attribution.min_train_images must be >= 1, got "
                        f"{attribution.min_train_images}")
    if config.loss.get("attribution_weight", 0.0) < 0:
      raise ConfigError(f"loss.attribution_weight must be >= 0, got "
                        f"{config.loss.attribution_weight}")
  if not 0.0 <= config.eval.get("unsure_error", 0.05) < 1.0:
    raise ConfigError(f"eval.unsure_error must be in [0, 1), got {config.eval.unsure_error}")
  smallest = min_image_size(model)
  if data.image_size < smallest:
    raise ConfigError(f"data.image_size {data.image_size} is smaller than the network's minimum "
                      f"{smallest} (model.num_blocks={model.num_blocks})")
  for key in ("batch_size", "eval_batch_size"):
    value = train[key]
    if value <= 0 or value % num_devices:
      raise ConfigError(f"train.{key} {value} must be a positive multiple of the "
                        f"{num_devices} devices")
  if train.val_examples < 0:
    raise ConfigError(f"train.val_examples must be >= 0 (0 = the whole dev split), got "
                      f"{train.val_examples}")
  for key in ("num_epochs", "log_every_steps", "checkpoint_every_steps",
              "stop_check_every_steps"):
    if train[key] <= 0:
      raise ConfigError(f"train.{key} must be positive, got {train[key]}")
  try:
    ops.parse_reencode(data.reencode)
    randomize.from_config(data)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if data.get("holdout_camera", -1) != -1 and data.source != "synthetic":
    raise ConfigError("data.holdout_camera needs data.source='synthetic' (the benchmark knows "
                      f"its cameras), got source {data.source!r}")
  if not 0.0 < data.audit_shortcut_threshold <= 1.0:
    raise ConfigError(f"data.audit_shortcut_threshold must be in (0, 1], got "
                      f"{data.audit_shortcut_threshold}")
  if not 0.0 <= data.augment_prob <= 1.0:
    raise ConfigError(f"data.augment_prob must be in [0, 1], got {data.augment_prob}")


def _one_line(error: BaseException, argv: Sequence[str]) -> str:
  """A flag-parsing failure as one line naming the flag."""
  text = str(error).strip()
  if isinstance(error, (AttributeError, KeyError)):
    key = re.match(r"[\\'\"]*(\w+)", text).group(1)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    flag = next((a.split("=")[0] for a in argv if re.search(rf"\.{re.escape(key)}(=|$)", a)), key)
    return (f"{flag}: unknown config key {key!r}"
            + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  missing = next((l for l in lines if "No such file" in l or "Errno" in l), None)
  if missing:
    return f"cannot load the config file: {missing}"
  return " ".join(lines)[:500]


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing with one-line errors (exit 2): pass as
  `app.run(main, flags_parser=config.parse_flags)`."""
  try:
    rest = flags.FLAGS(list(argv))
    for name in CONFIG_FLAGS:  # config files load lazily: load them now, inside the guard
      value = flags.FLAGS[name].value if name in flags.FLAGS else None
      if value is not None:
        list(value.keys())  # a failed load leaves a placeholder that raises here
    return rest
  except Exception as e:  # noqa: BLE001 - every parsing failure is a usage error
    print(f"error: {_one_line(e, argv)}", file=sys.stderr)
    sys.exit(USAGE_ERROR)
