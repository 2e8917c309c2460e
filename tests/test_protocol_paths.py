"""Protocol filenames resolve under the data root and never escape it, also
through symlinks (the fast path resolves each directory once, so these cases
are checked here against realpath's answer)."""

import os

import pytest

from cmfl_jax.data import readers
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
