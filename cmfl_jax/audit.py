"""Data audit before training: storage shortcuts, duplicates, leakage.

  python -m cmfl_jax.audit --config=configs/default.py [--workdir=DIR] [--config.data.*]

Also run at the start of every training and evaluation (`data.audit`): a
summary in the log and in `data_report.json`, the full results as
`audit.json` and `audit.md` in the workdir, and a loud warning when a
classifier could separate the classes from storage metadata alone (with the
remedy: `data.reencode`) or when the splits share images or subjects.
File-backed sources only (`csv`, `folder`); in-memory and TFDS records have
no files to audit. The library is `cmfl_jax.data.auditing`.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

from cmfl_jax import backend
from cmfl_jax import config as config_lib
from cmfl_jax.data.auditing import configured


_DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        "default.py")


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  try:
    config_lib.validate(config)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return config_lib.USAGE_ERROR
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  workdir = flags.FLAGS.workdir or os.path.join("runs", name)
  config.data.audit = True
  from cmfl_jax.data.split import DataError
  try:
    result = configured.audit_data(config.data, workdir)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if result is None:
    print(f"nothing to audit: data.source={config.data.source!r} keeps no image files")
    return 0
  from cmfl_jax.data import auditing as audit_lib
  print("\n".join(audit_lib.summary_lines(result)))
  print(f"full results: {os.path.join(workdir, 'audit.md')}")
  return 0


if __name__ == "__main__":
  backend.reexec_with_tuned_malloc()
  config_flags.DEFINE_config_file("config", _DEFAULT, "Python config file (get_config()).",
                                  lock_config=False)
  flags.DEFINE_string("workdir", None, "Where audit.json / audit.md go (default runs/<config>).")
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=config_lib.parse_flags)
