"""Data audit: storage shortcuts, duplicates, subject overlap, bad files, cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmfl_jax.data import auditing as audit


def _img(seed: int, size: int = 48) -> Image.Image:
  """A smooth random picture (upsampled 8x8 colours + mild noise): distinct images have
  unrelated perceptual hashes, like distinct faces."""
  r = np.random.default_rng(seed)
  grid = Image.fromarray(r.integers(0, 256, (8, 8, 3), dtype=np.uint8))
  a = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), np.float64)
  a += r.normal(0, 6, a.shape)
  return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _save(im: Image.Image, path: Path, quality: int | None = None) -> str:
  if quality is None:
    im.save(path.with_suffix(".png"), "PNG")
    return str(path.with_suffix(".png"))
  im.save(path.with_suffix(".jpg"), "JPEG", quality=quality)
  return str(path.with_suffix(".jpg"))


def _split(name, paths, labels, generators=None, subjects=None):
  labels = np.asarray(labels)
  if generators is None:
    generators = np.where(labels == 1, "real", "gan")
  return audit.AuditSplit(name, np.asarray(paths), labels, np.asarray(generators),
                          None if subjects is None else np.asarray(subjects))


def _audit(tmp_path, splits, **kw):
  kw.setdefault("workers", 2)
  return audit.run_audit({s.name: s for s in splits}, tmp_path / "cache" / "audit.sqlite", **kw)


def test_jpeg_quality_estimate_recovers_pil_quality(tmp_path):
  im = _img(0, 32)
  for q in range(50, 101):
    rec = audit.read_file_record(_save(im, tmp_path / f"q{q}", q))
    assert rec["ok"] and rec["format"] == "JPEG"
    assert abs(rec["jpeg_quality"] - q) <= 1, (q, rec["jpeg_quality"])
    assert rec["jpeg_table"] == "ijg"
  for q in range(1, 101):  # the inversion itself, below 50 too
    assert audit.estimate_jpeg_quality(audit.ijg_luma_table(q)) == (q, True)
  custom = np.clip(audit.ijg_luma_table(80) + np.arange(64) % 3, 1, 255)
  q, exact = audit.estimate_jpeg_quality(custom)
  assert not exact and 70 <= q <= 85


def test_header_fields(tmp_path):
  im = _img(1, 40)
  jpg = tmp_path / "a.jpg"
  exif = Image.Exif()
  exif[0x0131] = "camera"  # Software
  im.save(jpg, "JPEG", quality=90, subsampling=0, progressive=True, exif=exif.tobytes())
  png = tmp_path / "b.png"
  Image.fromarray(np.zeros((20, 30), np.uint16) + 1000).save(png)  # 16-bit grey
  a, b = audit.read_file_record(str(jpg)), audit.read_file_record(str(png))
  assert (a["format"], a["subsampling"], a["progressive"], a["exif"], a["icc"]) == \
      ("JPEG", "4:4:4", True, True, False)
  assert (a["width"], a["height"], a["mode"], a["bit_depth"]) == (40, 40, "RGB", 8)
  assert a["bytes"] == jpg.stat().st_size
  assert a["bytes_per_pixel"] == pytest.approx(a["bytes"] / 1600)
  assert (b["format"], b["width"], b["height"], b["bit_depth"], b["lossless"]) == \
      ("PNG", 30, 20, 16, "lossless")
  assert b["jpeg_quality"] is None and len(b["phash"]) == 16


def test_planted_storage_shortcut_warns_and_names_format(tmp_path):
  paths, labels = [], []
  for i in range(48):
    bona = i % 2 == 0
    paths.append(_save(_img(i), tmp_path / f"img{i}", 75 if bona else None))
    labels.append(int(bona))
  res = _audit(tmp_path, [_split("train", paths, labels)])
  score = res["shortcut"]["scores"][0]
  assert score["status"] == "ok" and score["auc"] > 0.95
  (warn,) = res["shortcut"]["warnings"]
  assert "format" in warn["features"] and "jpeg_quality" in warn["features"]
  assert warn["storage"] == {"bona_fide": "100% JPEG q75 4:2:0", "attack": "100% PNG"}
  fmt = next(f for f in warn["feature_details"] if f["feature"] == "format")
  assert fmt["bona_fide"] == "100% JPEG" and fmt["attack"] == "100% PNG"
  assert "data.reencode" in warn["remedy"] and "robustness" in warn["remedy"]
  cls = res["splits"]["train"]["classes"]
  assert cls["bona_fide"]["formats"] == {"JPEG": 24}
  assert cls["bona_fide"]["jpeg_quality"] == {"75": 24}
  assert cls["attack"]["formats"] == {"PNG": 24} and cls["attack"]["width"]["median"] == 48
  jp, mp = map(Path, audit.write_audit(res, str(tmp_path / "report")))
  assert json.loads(jp.read_text())["shortcut"]["warnings"][0]["auc"] == warn["auc"]
  assert "Shortcut risk" in mp.read_text() and "data.reencode" in mp.read_text()
  assert any(line.lstrip().startswith("WARNING") for line in audit.summary_lines(res))


def test_format_balanced_data_gives_no_warning(tmp_path):
  rng = np.random.default_rng(7)
  paths, labels = [], []
  for i in range(80):
    q = None if rng.random() < 0.5 else int(rng.integers(70, 96))
    paths.append(_save(_img(100 + i, int(rng.choice([40, 48]))), tmp_path / f"img{i}", q))
    labels.append(i % 2)
  res = _audit(tmp_path, [_split("train", paths, labels)])
  score = res["shortcut"]["scores"][0]
  assert score["status"] == "ok" and score["auc"] < 0.75, score["auc"]
  assert res["shortcut"]["warnings"] == []


def test_one_generator_stored_differently_is_flagged(tmp_path):
  # Class level: 1 attack in 4 is PNG, the rest look like the reals (JPEG q90); the
  # per-generator comparison exposes it.
  paths, labels, gens = [], [], []
  for i in range(48):
    gen = "real" if i < 24 else ("sg2" if i % 4 == 0 else "sd")
    paths.append(_save(_img(600 + i), tmp_path / f"g{i}", None if gen == "sg2" else 90))
    labels.append(int(gen == "real"))
    gens.append(gen)
  res = _audit(tmp_path, [_split("train", paths, labels, gens)])
  scores = {s["comparison"]: s for s in res["shortcut"]["scores"]}
  assert scores["bona fide vs attack"]["auc"] <= 0.75
  assert scores["bona fide vs sg2"]["auc"] > 0.95 and scores["bona fide vs sd"]["auc"] < 0.75
  (warn,) = res["shortcut"]["warnings"]
  assert warn["comparison"] == "bona fide vs sg2" and "format" in warn["features"]


def test_tiny_and_constant_splits_are_handled(tmp_path):
  tiny = [_save(_img(i), tmp_path / f"t{i}") for i in range(3)]
  same = [_save(_img(10 + i), tmp_path / f"s{i}") for i in range(12)]
  res = _audit(tmp_path, [_split("train_tiny", tiny, [1, 0, 1]),
                          _split("train_png", same, [i % 2 for i in range(12)])])
  tiny_score, png_score = res["shortcut"]["scores"]
  assert tiny_score["status"] == "skipped" and "at least 5" in tiny_score["note"]
  assert png_score["status"] == "ok"
  assert {"format", "jpeg_quality", "width", "mode"} <= set(png_score["constant_features"])
  json.dumps(res, allow_nan=False)
  with pytest.raises(ValueError, match="unknown shortcut features"):
    audit.shortcut_score([], np.zeros(0), features=["pixels"])


def test_exact_and_near_duplicates_and_subject_overlap(tmp_path):
  train = [_save(_img(200 + i), tmp_path / f"train{i}", 90 if i % 2 else None) for i in range(10)]
  evals = [_save(_img(300 + i), tmp_path / f"eval{i}", 90 if i % 2 else None) for i in range(10)]
  copy = str(tmp_path / "eval_copy.png")
  shutil.copy(train[0], copy)  # exact duplicate under another name
  near = tmp_path / "eval_near.jpg"
  src = Image.open(train[1])
  src.resize((36, 36), Image.Resampling.BILINEAR).save(near, "JPEG", quality=80)
  evals += [copy, str(near)]
  subj_train = [f"s{i}" for i in range(10)]
  subj_eval = [f"e{i}" for i in range(10)] + ["s0", "s3"]
  res = _audit(tmp_path, [_split("train", train, [1, 0] * 5, subjects=subj_train),
                          _split("eval", evals, [1, 0] * 6, subjects=subj_eval)],
               train_splits=())
  ex = res["exact_duplicates"]
  assert ex["pairs_by_split_pair"] == {"train~eval": 1}
  paths = {e["path"] for e in ex["listed"][0]["entries"]}
  assert paths == {os.path.abspath(train[0]), os.path.abspath(copy)}
  nd = res["near_duplicates"]
  assert sum(nd["pairs_by_split_pair"].values()) == 1, nd["listed"]  # unrelated ones not found
  (pair,) = nd["listed"]
  assert {pair["a"]["path"], pair["b"]["path"]} == {os.path.abspath(train[1]), str(near)}
  assert pair["hamming"] <= 8
  ov = res["subject_overlap"]["pairs"]["train~eval"]
  assert ov["shared"] == 2 and ov["examples"] == ["s0", "s3"] and ov["images_affected"] == [2, 2]
  kinds = {f["kind"] for f in res["findings"]}
  assert {"exact_duplicates", "near_duplicates", "subject_overlap"} <= kinds


def test_hamming_search_misses_nothing():
  rng = np.random.default_rng(0)
  h = rng.integers(0, 2**63, 1500, dtype=np.uint64) << np.uint64(1)
  h |= rng.integers(0, 2, h.size).astype(np.uint64)
  planted = []
  for d in range(12):  # neighbours at 0..11 bits
    x = int(h[d])
    for b in rng.choice(64, d, replace=False):
      x ^= 1 << int(b)
    planted.append(x)
  h = np.concatenate([h, np.asarray(planted, np.uint64)])
  ref, ref_d, _ = audit.hamming_pairs(h, 8, bands=0)
  assert {(a, b) for a, b in ref.tolist()} >= {(d, 1500 + d) for d in range(9)}
  for bands in (None, 3, 5, 9, 16):
    pairs, dist, info = audit.hamming_pairs(h, 8, bands=bands)
    assert np.array_equal(pairs, ref) and np.array_equal(dist, ref_d), bands
    if bands in (5, 9):
      assert info["candidates"] < h.size ** 2 / 20  # far fewer than all pairs


def test_bad_files_are_reported_not_fatal(tmp_path):
  good = [_save(_img(400 + i), tmp_path / f"g{i}", 85) for i in range(4)]
  corrupt = tmp_path / "corrupt.png"
  corrupt.write_bytes(np.random.default_rng(0).bytes(500))
  empty = tmp_path / "empty.jpg"
  empty.write_bytes(b"")
  whole = Path(_save(_img(9, 64), tmp_path / "whole", 90)).read_bytes()
  truncated = tmp_path / "truncated.jpg"
  truncated.write_bytes(whole[: len(whole) // 2])
  missing = tmp_path / "missing.png"
  paths = good + [str(corrupt), str(empty), str(truncated), str(missing)]
  res = _audit(tmp_path, [_split("train", paths, [1, 0] * 4)], train_splits=())
  reasons = {Path(u["path"]).name: u["reason"] for u in res["unreadable"]}
  assert set(reasons) == {"corrupt.png", "empty.jpg", "truncated.jpg", "missing.png"}
  assert "not a readable image" in reasons["corrupt.png"]
  assert reasons["empty.jpg"] == "empty file" and reasons["missing.png"] == "missing file"
  assert "pixel data unreadable" in reasons["truncated.jpg"]
  assert res["splits"]["train"]["unreadable"] == 4
  _, md = map(Path, audit.write_audit(res, str(tmp_path / "report")))
  assert "corrupt.png" in md.read_text() and "missing.png" in md.read_text()


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
  paths = [_save(_img(500 + i), tmp_path / f"c{i}", 80 if i % 2 else None) for i in range(8)]
  split = _split("eval", paths, [1, 0] * 4)
  first = _audit(tmp_path, [split])
  assert first["files"]["read"] == 8 and first["files"]["from_cache"] == 0

  opened = []
  real_open = Image.open
  monkeypatch.setattr(Image, "open",
                      lambda fp, *a, **k: opened.append(fp) or real_open(fp, *a, **k))
  second = _audit(tmp_path, [split])
  assert opened == [] and second["files"]["from_cache"] == 8
  assert second["splits"] == first["splits"]

  _save(_img(999, 56), Path(paths[0]).with_suffix(""))  # new content, new size
  st = os.stat(paths[1])
  os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new mtime
  third = _audit(tmp_path, [split])
  assert len(opened) == 2 and third["files"]["read"] == 2
  assert third["splits"]["eval"]["classes"]["bona_fide"]["width"]["max"] == 56


def test_result_is_reused_only_for_identical_inputs(tmp_path, monkeypatch):
  """A warm start recomputes nothing while the splits, files and parameters are
  unchanged; a new label, parameter or file state is a new audit."""
  paths = [_save(_img(700 + i), tmp_path / f"r{i}", 80 if i % 2 else None) for i in range(12)]
  split = _split("train", paths, [1, 0] * 6)
  first = _audit(tmp_path, [split])
  scored = []
  real_score = audit.shortcut.shortcut_score
  monkeypatch.setattr(audit.shortcut, "shortcut_score",
                      lambda *a, **k: scored.append(1) or real_score(*a, **k))
  again = _audit(tmp_path, [split])
  assert scored == [] and again["reused_from"] == first["created"]
  assert {k: again[k] for k in ("splits", "shortcut", "findings", "near_duplicates")} == \
      {k: first[k] for k in ("splits", "shortcut", "findings", "near_duplicates")}
  assert again["files"]["read"] == 0 and again["files"]["from_cache"] == 12
  _audit(tmp_path, [_split("train", paths, [0, 1] * 6)])
  _audit(tmp_path, [split], hamming=4)
  os.utime(paths[3], ns=(0, os.stat(paths[3]).st_mtime_ns + 10**9))
  last = _audit(tmp_path, [split])
  assert len(scored) == 3 and last["reused_from"] is None and last["files"]["read"] == 1


# The audit's warning at the start of training (before step 1), its files in a
# (non-local) workdir:
# tests/test_remote_workdir.py::test_non_posix_workdir_train_eval_reports_and_audit.
