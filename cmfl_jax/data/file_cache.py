"""Per-file results kept across runs, so that a start, a resume or an evaluation
re-reads only the files that are new or changed.

One SQLite file per user (`default_cache_path`, never inside the data root);
each kind of result has its own table and version: the data audit's records
(`auditing.metadata`, table "files") and the up-front file check's verdicts (`readers`,
table "checks"). A row is found by the file's path and counts only while the
file keeps its size and mtime_ns and the kind keeps its version; files that
cannot be stat'ed are never cached (a missing file is always found missing).

The cache is an optimisation, never a requirement: a location that cannot be
created, opened, read or written degrades to "no cache" (or "read only") with
one warning per location and process. No dependency on other project modules.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat as stat_lib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: A cache path that keeps nothing between runs (sqlite's in-memory database).
MEMORY = ":memory:"
#: (size, mtime_ns) of a file: a cached row counts only while they are unchanged.
Key = tuple[int, int]
_WARNED: set[str] = set()


def user_cache_dir() -> Path:
  """This project's per-user cache directory ($XDG_CACHE_HOME or ~/.cache),
  never inside a data root."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
  return Path(base) / "cmfl_jax"


def default_cache_path() -> Path:
  """The per-user cache file of audit records and check verdicts."""
  return user_cache_dir() / "audit" / "metadata.sqlite"


def resolve_path(path: str | os.PathLike | None) -> str:
  """The sqlite file for `path`: None or "" -> the default; a directory (or a
  path ending in a separator) -> metadata.sqlite in it; MEMORY as is."""
  spath = os.fspath(path) if path else os.fspath(default_cache_path())
  if spath == MEMORY:
    return spath
  p = Path(spath).expanduser()
  if p.is_dir() or spath.endswith(("/", os.sep)):
    p = p / "metadata.sqlite"
  return str(p)


def _warn_once(path: str, what: str, error: BaseException) -> None:
  if path in _WARNED:
    return
  _WARNED.add(path)
  log.warning("per-file cache %s %s (%s: %s); continuing without it (every file is read). "
              "Point data.audit_cache / data.verify_cache at a writable file, or ':memory:'.",
              path, what, type(error).__name__, error)


class RealPaths:
  """Real paths (os.path.realpath's answer: symlinks resolved) of many files,
  each directory resolved once, so a file costs one lstat, not a realpath.
  The one resolver behind the cache's names (`stat_keys(real=True)`) and the
  data-root check of protocol filenames (`readers.UnderRoot`), which relies
  on it for security: a symlink must not lead out of the root unnoticed. A
  path with a '..' component is resolved whole: after a symlink, only
  realpath knows where '..' goes."""

  def __init__(self):
    self._dirs: dict[str, str] = {}

  def _in_real_dir(self, path: str) -> tuple[str, bool]:
    """(name, final): the real path when `final`, else the file's name in its
    real directory (the file itself may still be a symlink)."""
    if ".." in path and ".." in path.replace(os.sep, "/").split("/"):
      return os.path.realpath(path), True
    head, tail = os.path.split(os.path.abspath(path))
    real_head = self._dirs.get(head)
    if real_head is None:
      real_head = self._dirs[head] = os.path.realpath(head)
    return os.path.join(real_head, tail), False

  def __call__(self, path: str | os.PathLike) -> str:
    """The real path of `path`, also for a file that does not exist."""
    name, final = self._in_real_dir(os.fspath(path))
    return name if final or not os.path.islink(name) else os.path.realpath(name)

  def stat(self, path: str | os.PathLike) -> tuple[str, os.stat_result]:
    """(real path, os.stat of it): one lstat for a file that is not a symlink.
    Raises OSError whose `filename` is the real path reached."""
    name, final = self._in_real_dir(os.fspath(path))
    if final:
      return name, os.stat(name)
    st = os.lstat(name)
    if stat_lib.S_ISLNK(st.st_mode):
      name = os.path.realpath(name)
      st = os.stat(name)
    return name, st


def stat_keys(paths: Sequence[str], real: bool = False
              ) -> tuple[list[str], dict[str, Key], dict[str, str]]:
  """(names, keys, problems) for `paths`: each path's name in the cache (absolute;
  with `real`, symlinks resolved by `RealPaths`), name -> (size, mtime_ns) of the
  regular files, name -> reason for the others ("missing file", ...). One stat
  per file; with `real`, one realpath per directory (and per symlinked file or
  '..' path)."""
  names: list[str] = []
  keys: dict[str, Key] = {}
  problems: dict[str, str] = {}
  real_paths = RealPaths() if real else None
  for p in paths:
    p = os.fspath(p)
    try:
      if real_paths is None:
        name = os.path.abspath(p)
        st = os.stat(name)
      else:
        name, st = real_paths.stat(p)
    except OSError as e:
      name = e.filename  # the (real) path that could not be stat'ed
      if isinstance(e, FileNotFoundError):
        problems[name] = "missing file"
      else:
        problems[name] = f"cannot stat ({type(e).__name__}: {e})"
    else:
      if stat_lib.S_ISREG(st.st_mode):
        keys[name] = (int(st.st_size), int(st.st_mtime_ns))
      else:
        problems[name] = "not a regular file"
    names.append(name)
  return names, keys, problems


def current_key(path: str) -> Key | None:
  """(size, mtime_ns) of `path` now, or None: a result is stored only when the file
  did not change while it was read."""
  try:
    st = os.stat(path)
  except OSError:
    return None
  return int(st.st_size), int(st.st_mtime_ns)


class FileCache:
  """JSON records of one kind in `table`, keyed by path; a row whose size, mtime_ns
  or version differ from the asked ones is a miss. MEMORY keeps nothing between
  runs. Used from one thread; sqlite's locking lets several processes share the
  file. Never raises for the cache itself: see the module docstring."""

  def __init__(self, path: str | os.PathLike | None, table: str, version: int):
    if not table.isidentifier():
      raise ValueError(f"bad table name {table!r}")
    self.path, self.table, self.version = resolve_path(path), table, version
    self.usable, self.writable = True, True
    self._db: sqlite3.Connection | None = None
    try:
      if self.path != MEMORY:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
      self._db = sqlite3.connect(self.path, timeout=60)
      exists = self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                (table,)).fetchone()
      if not exists:
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} (path TEXT PRIMARY KEY, "
                         "size INTEGER, mtime_ns INTEGER, version INTEGER, record TEXT)")
        self._db.commit()
    except (OSError, sqlite3.Error) as e:
      self._fail("cannot be opened", e)

  def _fail(self, what: str, error: BaseException) -> None:
    _warn_once(self.path, what, error)
    self.usable = self.writable = False

  def get_many(self, keys: Mapping[str, Key]) -> dict[str, dict]:
    """Records for the paths whose stored (size, mtime_ns) equal the given ones."""
    out: dict[str, dict] = {}
    if not self.usable:
      return out
    paths = list(keys)
    try:
      for i in range(0, len(paths), 500):
        chunk = paths[i:i + 500]
        rows = self._db.execute(
            f"SELECT path, size, mtime_ns, version, record FROM {self.table} WHERE path IN "
            f"({','.join('?' * len(chunk))})", chunk)
        for p, size, mtime, version, record in rows:
          if version == self.version and (size, mtime) == keys[p]:
            try:
              out[p] = json.loads(record)
            except (TypeError, ValueError):
              pass  # a damaged row is a miss
    except sqlite3.Error as e:
      self._fail("cannot be read", e)
      return {}
    return out

  def put_many(self, items: Iterable[tuple[str, int, int, dict]]) -> None:
    """Stores (path, size, mtime_ns, record) rows, replacing older ones."""
    if not self.writable:
      return
    rows = [(p, s, m, self.version, json.dumps(r, separators=(",", ":"))) for p, s, m, r in items]
    if not rows:
      return
    try:
      with self._db:
        self._db.executemany(f"INSERT OR REPLACE INTO {self.table} VALUES (?, ?, ?, ?, ?)", rows)
    except sqlite3.Error as e:
      _warn_once(self.path, "cannot be written", e)
      self.writable = False  # what was read stays usable

  def close(self) -> None:
    if self._db is not None:
      self._db.close()
      self._db = None

  def __enter__(self) -> "FileCache":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
