"""All-or-nothing output directories: everything is written into a hidden
sibling `OUT.tmp-XXXX` and renamed to `OUT` only once complete, so a failure
(an exception, a full disk, an interrupt) leaves no `OUT` and no partial one.
An existing `OUT` is refused unless overwriting is asked for; then it is
replaced only after the new one is complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from cmfl_jax.exporting.errors import ExportError


def check_target(output: str, overwrite: bool) -> str:
  """The absolute output path, or ExportError if it cannot be used (checked
  before any expensive work)."""
  output = os.path.abspath(output)
  if os.path.lexists(output) and not overwrite:
    raise ExportError(f"{output} already exists; choose another --output or pass --overwrite")
  if os.path.lexists(output) and not os.path.isdir(output):
    raise ExportError(f"{output} exists and is not a directory; not replacing it")
  return output


@contextlib.contextmanager
def staged_directory(output: str, overwrite: bool) -> Iterator[str]:
  """Yields an empty staging directory; on normal exit it becomes `output`."""
  output = check_target(output, overwrite)
  parent = os.path.dirname(output)
  try:
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would make OUT private
  except OSError as e:
    raise ExportError(f"cannot write under {parent}: {e.strerror or e}") from None
  try:
    yield staging
    _commit(staging, output)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def _commit(staging: str, output: str) -> None:
  old = None
  try:
    if os.path.lexists(output):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.old-",
                             dir=os.path.dirname(output))
      os.rename(output, os.path.join(old, "previous"))
    os.rename(staging, output)
  except OSError as e:
    if old and not os.path.lexists(output):  # put the previous one back
      os.rename(os.path.join(old, "previous"), output)
    raise ExportError(f"cannot move the finished export to {output}: {e.strerror or e}") from None
  finally:
    if old:
      shutil.rmtree(old, ignore_errors=True)
