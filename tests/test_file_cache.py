"""The per-file cache of up-front check verdicts: a later start opens no
unchanged file, a changed one is re-checked, broken and missing files are still
reported, header mode decodes no pixel, and an unusable cache location only
warns. Counted by calls, not timed."""

import csv
import logging
import os

import pytest
from PIL import Image, ImageFile

from cmfl_jax.data import auditing as audit
from cmfl_jax.data import file_cache, readers, sources
from test_input_pipeline import data_config, write_dataset


@pytest.fixture
def counted(monkeypatch):
  """Counts file checks and pixel decodes (PIL's ImageFile.load) from here on."""
  calls = {"check": [], "load": 0}
  check, load = readers.check_image_file, ImageFile.ImageFile.load

  def counting_check(path, *a, **k):
    calls["check"].append(os.path.basename(path))
    return check(path, *a, **k)

  def counting_load(im, *a, **k):
    calls["load"] += 1
    return load(im, *a, **k)

  monkeypatch.setattr(readers, "check_image_file", counting_check)
  monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
  return calls


def _dataset(tmp_path, **kw):
  """The test_input_pipeline dataset (8 files per split) plus a truncated PNG in train."""
  data_root, proto = write_dataset(str(tmp_path))
  good = open(os.path.join(data_root, "train", "real", "0.png"), "rb").read()
  open(os.path.join(data_root, "trunc.png"), "wb").write(good[: len(good) // 2])
  with open(os.path.join(proto, "train.csv"), "a", newline="") as f:
    csv.writer(f).writerow(["x", "trunc.png", "stylegan2"])
  kw.setdefault("verify_cache", str(tmp_path / "cache" / "checks.sqlite"))
  return data_root, data_config(data_root=data_root, protocol_dir=proto, **kw)


def _reasons(skipped):
  return {os.path.basename(s["path"]): s["reason"] for s in skipped}


def test_a_second_start_opens_no_file_and_still_reports_the_broken_one(tmp_path, counted):
  _, cfg = _dataset(tmp_path)
  first, skipped = sources.load_splits(cfg)
  assert len(counted["check"]) == 25 and counted["load"] == 25
  assert "not a readable image" in _reasons(skipped)["trunc.png"]
  counted["check"].clear()
  counted["load"] = 0
  second, skipped_again = sources.load_splits(cfg)
  assert counted["check"] == [] and counted["load"] == 0
  assert skipped_again == skipped
  paths = lambda splits: {k: list(v.paths) for k, v in splits.items()}  # noqa: E731
  assert paths(second) == paths(first)


def test_a_changed_file_is_checked_again_and_its_new_verdict_used(tmp_path, counted):
  data_root, cfg = _dataset(tmp_path)
  sources.load_splits(cfg)
  real0 = os.path.join(data_root, "train", "real", "0.png")
  real1 = os.path.join(data_root, "train", "real", "1.png")
  good = open(real0, "rb").read()
  open(real0, "wb").write(good[:-100])  # now truncated: new size
  st = os.stat(real1)
  os.utime(real1, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new mtime
  open(os.path.join(data_root, "trunc.png"), "wb").write(good)  # repaired
  counted["check"].clear()
  splits, skipped = sources.load_splits(cfg)
  assert sorted(counted["check"]) == ["0.png", "1.png", "trunc.png"]
  assert list(_reasons(skipped)) == ["0.png"] and len(splits["train"]) == 8
  os.remove(real1)  # a missing file is found by stat, never from the cache
  counted["check"].clear()
  _, skipped = sources.load_splits(cfg)
  assert counted["check"] == [] and _reasons(skipped)["1.png"] == "missing file"


def test_verdicts_depend_on_the_check_settings(tmp_path, counted):
  """A decode verdict answers a header request, not the other way round; another
  min_side is another verdict."""
  _, cfg = _dataset(tmp_path, verify="header")
  _, skipped = sources.load_splits(cfg)
  assert counted["load"] == 0 and "trunc.png" not in _reasons(skipped)  # header: not decoded
  cfg.verify = "decode"
  counted["check"].clear()
  _, skipped = sources.load_splits(cfg)
  assert len(counted["check"]) == 25 and "trunc.png" in _reasons(skipped)
  cfg.verify = "header"
  counted["check"].clear()
  _, skipped = sources.load_splits(cfg)
  assert counted["check"] == [] and "trunc.png" in _reasons(skipped)
  cfg.min_side = 41
  counted["check"].clear()
  with pytest.raises(ValueError, match="no bona fide"):  # every 40px image is now too small
    sources.load_splits(cfg)
  assert counted["check"]


def test_header_mode_decodes_no_pixel(tmp_path, counted):
  path = tmp_path / "big.png"
  Image.new("RGB", (300, 200)).save(path)
  jpg = tmp_path / "a.jpg"
  Image.new("RGB", (64, 64)).save(jpg)
  reasons = readers.check_image_files([str(path), str(jpg), str(tmp_path / "no.png")], 100,
                                      10**6, full_decode=False, cache_path=file_cache.MEMORY)
  assert reasons == [None, "too small (64x64; min side 100)", "missing file"]
  assert counted["load"] == 0
  readers.check_image_files([str(path)], 100, 10**6, True, file_cache.MEMORY)
  assert counted["load"] == 1


def test_symlinked_files_share_one_verdict(tmp_path, counted):
  target = tmp_path / "a.png"
  Image.new("RGB", (32, 32)).save(target)
  (tmp_path / "link.png").symlink_to(target)
  cache = tmp_path / "c.sqlite"
  assert readers.check_image_files([str(tmp_path / "link.png")], 16, 10**6, True, cache) == [None]
  assert readers.check_image_files([str(target)], 16, 10**6, True, cache) == [None]
  assert counted["check"] == ["a.png"]


@pytest.mark.parametrize("where", ["under_a_file", "not_a_database"])
def test_an_unusable_cache_location_warns_once_and_checks_without_it(tmp_path, caplog, where):
  blocker = tmp_path / "blocker"
  blocker.write_text("a regular file, not a directory nor a database")
  cache = blocker / "checks.sqlite" if where == "under_a_file" else blocker
  _, cfg = _dataset(tmp_path, verify_cache=str(cache))
  with caplog.at_level(logging.WARNING):
    splits, skipped = sources.load_splits(cfg)  # three splits, three cache openings
    sources.load_splits(cfg)
  warnings = [r for r in caplog.records if "per-file cache" in r.getMessage()]
  assert len(warnings) == 1 and str(cache) in warnings[0].getMessage()
  assert len(splits["train"]) == 8 and list(_reasons(skipped)) == ["trunc.png"]
  assert blocker.read_text().startswith("a regular file")  # left alone
  # The audit shares the cache code, and so the degradation.
  records, stats = audit.read_records(splits["dev"].paths, cache)
  assert stats["read"] == 8 and all(r["ok"] for r in records.values())
