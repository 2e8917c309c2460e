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
from typing import Any, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from cmfl_jax import backend
from cmfl_jax import config as config_lib


def audit_data(data: Any, workdir: str, names: Sequence[str] | None = None) -> dict | None:
  """Audits the named splits (default: train, val, eval) of `config.data` as
  the source lists them (before unusable files are dropped); process 0 only.
  Returns the result, or None where nothing was audited."""
  import jax

  from cmfl_jax.data import auditing as audit_lib
  from cmfl_jax.data import sources
  if not data.audit or jax.process_index() != 0:
    return None
  names = list(dict.fromkeys(n for n in (names or [data.train_split, data.val_split,
                                                   *data.eval_splits]) if n))
  read = sources.SOURCES[data.source](data)
  splits = {}
  for name in names:
    split = read(name)
    if split.paths is None:
      logging.info("data audit skipped: source %r keeps no image files", data.source)
      return None
    splits[name] = audit_lib.AuditSplit(name, split.paths, split.labels, split.generators,
                                        split.subjects)
  result = audit_lib.run_audit(splits, data.audit_cache or None,
                               train_splits=[data.train_split],
                               shortcut_threshold=data.audit_shortcut_threshold,
                               hamming=data.audit_hamming)
  audit_lib.write_audit(result, workdir)
  for line in audit_lib.summary_lines(result):
    logging.info("%s", line)
  for finding in result["findings"]:
    logging.warning("DATA AUDIT: %s (details: %s)", finding["message"],
                    os.path.join(workdir, "audit.md"))
  for warning in result["shortcut"]["warnings"]:
    logging.warning("DATA AUDIT: %s", warning.get("remedy", audit_lib.REMEDY))
  return result


def summary(result: dict | None) -> dict[str, Any]:
  """What `data_report.json` keeps of an audit."""
  if result is None:
    return {"audit": None}
  return {"audit": {"findings": result["findings"], "shortcut_auc": {
      f"{s['split']}: {s['comparison']}": s.get("auc") for s in result["shortcut"]["scores"]},
      "details": "audit.json, audit.md"}}


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
    result = audit_data(config.data, workdir)
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
