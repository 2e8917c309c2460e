"""Protocol filenames resolve under the data root and never escape it, also
through symlinks, and the per-file cache names files by the same real paths
(one resolver, `file_cache.RealPaths`, that resolves each directory once, so
these cases are checked here against realpath's answer)."""

import os

import pytest

from cmfl_jax.data import file_cache, readers
from cmfl_jax.data.split import DataError


@pytest.fixture
def tree(tmp_path):
  """root/{a/x.png, in -> a, out -> outside, xlink -> a/x.png, secret -> outside/s.png}."""
  root, outside = tmp_path / "root", tmp_path / "outside"
  (root / "a").mkdir(parents=True)
  outside.mkdir()
  (root / "a" / "x.png").write_bytes(b"x")
  (outside / "s.png").write_bytes(b"s")
  (outside / "sub").mkdir()
  (root / "in").symlink_to(root / "a")
  (root / "out").symlink_to(outside)
  (root / "xlink").symlink_to(root / "a" / "x.png")
  (root / "secret").symlink_to(outside / "s.png")
  (root / "outsub").symlink_to(outside / "sub")
  return root


@pytest.mark.parametrize("relative", ["a/x.png", "./a//x.png", "in/x.png", "xlink", "a/new.png",
                                      "in/../a/x.png", "a/../a/x.png"])
def test_paths_inside_the_root_resolve_to_their_real_path(tree, relative):
  got = readers.UnderRoot(str(tree))(relative, "p.csv:2")
  assert got == os.path.realpath(os.path.join(tree, relative))


@pytest.mark.parametrize("relative", ["out/s.png", "secret", "out", "outsub/../s.png",
                                      "../outside/s.png", "a/../../outside/s.png"])
def test_paths_escaping_the_root_are_refused_also_through_symlinks(tree, relative):
  with pytest.raises(DataError, match="escapes the data root"):
    readers.UnderRoot(str(tree))(relative, "p.csv:2")


def test_a_symlinked_root_is_resolved_once(tree, tmp_path):
  (tmp_path / "rootlink").symlink_to(tree)
  resolve = readers.UnderRoot(str(tmp_path / "rootlink"))
  assert resolve("in/x.png", "w") == os.path.realpath(tree / "a" / "x.png")
  with pytest.raises(DataError, match="escapes"):
    resolve("secret", "w")


# One resolver (`file_cache.RealPaths`) serves UnderRoot and the cache's
# names (`file_cache.stat_keys(real=True)`); each of its paths against realpath.
CASES = {"plain file": "a/x.png", "file in a symlinked directory": "in/x.png",
         "symlinked file": "xlink", "missing file": "in/new.png", "'..' after a symlink":
         "outsub/../s.png", "symlink out of the root": "secret", "dangling symlink": "gone"}


@pytest.fixture
def full_tree(tree):
  """tree plus root/gone -> a file that does not exist."""
  (tree / "gone").symlink_to(tree / "nowhere.png")
  return tree


@pytest.mark.parametrize("case", sorted(CASES))
def test_real_paths_are_realpaths_answer(full_tree, case, monkeypatch):
  path = os.path.join(full_tree, CASES[case])
  resolve = file_cache.RealPaths()
  assert resolve(path) == os.path.realpath(path)
  monkeypatch.chdir(full_tree)  # a relative path resolves from the working directory
  assert resolve(CASES[case]) == os.path.realpath(path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_stat_keys_names_files_by_their_real_path(full_tree, case):
  path = os.path.join(full_tree, CASES[case])
  (name,), keys, problems = file_cache.stat_keys([path], real=True)
  assert name == os.path.realpath(path)
  if os.path.isfile(path):
    assert keys == {name: (os.stat(path).st_size, os.stat(path).st_mtime_ns)} and not problems
  else:
    assert problems == {name: "missing file"} and not keys
  (plain,), _, _ = file_cache.stat_keys([path])  # without `real`: absolute, links kept
  assert plain == os.path.abspath(path)


def test_stat_keys_reports_a_directory_by_its_real_path(full_tree):
  (name,), keys, problems = file_cache.stat_keys([str(full_tree / "in")], real=True)
  assert name == str(full_tree / "a") and problems == {name: "not a regular file"} and not keys


def test_under_root_and_the_cache_resolve_alike_each_directory_once(full_tree, monkeypatch):
  """Files inside the root: UnderRoot's answer is the cache's name; one
  realpath per directory (and per symlinked file or '..' path), not per file."""
  inside = ["a/x.png", "in/x.png", "xlink", "a/y.png", "in/y.png", "a/z.png"]
  calls = []
  realpath = os.path.realpath
  monkeypatch.setattr(os.path, "realpath", lambda p, **k: calls.append(p) or realpath(p, **k))
  resolve = readers.UnderRoot(str(full_tree))
  got = [resolve(r, "p.csv:2") for r in inside]
  assert len(calls) == 1 + 3 + 1  # the root; a/, in/, the root's own files; xlink
  names, _, _ = file_cache.stat_keys([os.path.join(full_tree, r) for r in inside], real=True)
  assert got == names == [realpath(os.path.join(full_tree, r)) for r in inside]
