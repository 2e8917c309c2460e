"""The audit a data config asks for (`data.audit`): run by the audit command
and at the start of every training and evaluation, on the splits the
configured source lists (file-backed sources only)."""

from __future__ import annotations

import os
from typing import Any, Sequence

from absl import logging


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
