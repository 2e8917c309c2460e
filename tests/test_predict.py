"""Scoring files with `cmfl_jax.predict`: the scores of --mode=eval, broken
files reported in place, streaming in input order, the loader, a workdir
without checkpoints and --align on raw photographs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, SMOKE


def write_broken_files(folder: Path, prefix: str = "") -> dict[str, Path]:
  """Files predict must report, not score: kind -> path (the last one missing)."""
  import io
  from PIL import Image
  img = np.random.default_rng(5).integers(0, 255, (40, 40, 3), np.uint8)
  encoded = {}
  for fmt in ("JPEG", "PNG", "BMP"):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt)
    encoded[fmt] = buf.getvalue()
  files = {"truncated JPEG": ("truncated.jpg", encoded["JPEG"][:len(encoded["JPEG"]) // 2]),
           "truncated PNG": ("truncated.png", encoded["PNG"][:len(encoded["PNG"]) // 2]),
           "empty": ("empty.png", b""), "text": ("text.png", b"not an image at all\n"),
           # Neither the header check nor the truncation check sees this one: TF's decoder does.
           "truncated BMP": ("truncated.bmp", encoded["BMP"][:len(encoded["BMP"]) // 2])}
  out = {}
  for kind, (name, data) in files.items():
    out[kind] = folder / f"{prefix}{name}"
    out[kind].write_bytes(data)
  out["missing"] = folder / f"{prefix}missing.jpg"
  return out


#: The start of each broken file's error row.
BROKEN_REASONS = {"truncated JPEG": "error: not a readable image (truncated JPEG",
                  "truncated PNG": "error: not a readable image (truncated PNG",
                  "empty": "error: empty (0-byte) file",
                  "text": "error: not a readable image (UnidentifiedImageError",
                  "truncated BMP": "error: not a readable image (TF: ",
                  "missing": "error: missing file"}


def test_predict_scores_files_like_eval_and_reports_broken_ones(reference_run, tmp_path,
                                                                  cache_dir):
  """The command line: broken files sorted in among 16 good ones (two
  batches), one row each in input order, the others scored as --mode=eval
  scored them, exit status 1, throughput in the closing log line."""
  import csv
  import runpy
  from PIL import Image
  from cmfl_jax.data import sources
  from cmfl_jax.evaluation import score_files
  workdir, _ = reference_run
  config = runpy.run_path(SMOKE)["get_config"]()
  splits, _ = sources.load_splits(config.data, ["eval"])
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i, img in enumerate(splits["eval"].images):
    Image.fromarray(img).save(folder / f"{i:03d}.png")
  broken = {**{k: p for k, p in write_broken_files(folder, "003_").items() if k != "missing"},
            "missing": tmp_path / "missing.jpg"}
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-m", "cmfl_jax.predict", f"--workdir={workdir}", str(folder),
       str(tmp_path / "broken.png"), str(broken["missing"])],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  # Without the attribution head, the columns of before it existed.
  assert proc.stdout.splitlines()[0] == "path,score,verdict,reason,p_real_platt,error"
  rows = list(csv.DictReader(proc.stdout.splitlines()))
  assert len(rows) == 16 + len(broken) + 1
  in_folder = sorted(broken[k].name for k in broken if k != "missing")
  assert [os.path.basename(r["path"]) for r in rows] == (
      ["000.png", "001.png", "002.png", "003.png", *in_folder]
      + [f"{i:03d}.png" for i in range(4, 16)] + ["broken.png", "missing.jpg"])
  by_name = {os.path.basename(r["path"]): r for r in rows}
  for kind, path in broken.items():
    row = by_name[path.name]
    assert ("error: " + row["error"]).startswith(BROKEN_REASONS[kind]), row
    assert row["score"] == row["verdict"] == row["reason"] == row["p_real_platt"] == ""
  assert by_name["broken.png"]["error"].startswith("not a readable image")
  assert all(r["error"] == "" and r["reason"] for r in rows if r["score"])
  good = [r for r in rows if r["score"]]
  calibrated = [(float(r["score"]), float(r["p_real_platt"])) for r in good]
  assert all((a < c) == (b < d) for (a, b), (c, d) in zip(calibrated, calibrated[1:])
             if a != c)  # the calibration keeps the order of the scores
  step = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints", "best")))
  _, eval_scores, _ = score_files.read_scores(
      os.path.join(workdir, "eval", f"best_{step}", "eval_scores.csv"))
  got = np.asarray([float(r["score"]) for r in good])
  np.testing.assert_allclose(got, eval_scores, atol=1e-6)
  from cmfl_jax.training import checkpointing
  kind, best_step = checkpointing.select_step(workdir, "best")
  thr = checkpointing.read_meta(checkpointing.make_managers(workdir)[kind], best_step)[
      "dev_threshold"]
  assert 0.0 <= thr <= 1.0
  for r, s in zip(good, got):  # unsure (with its reason) near the threshold or if unstable
    assert r["verdict"] == ("real" if s >= thr else "synthetic") and r["reason"].startswith(
        "score ") or (r["verdict"] == "unsure" and r["reason"]), r
  assert all(by_name[p.name]["reason"] == "" for p in broken.values())
  summary = json.loads(next(l for l in proc.stderr.splitlines()
                            if '"images_per_sec"' in l).split("] ", 1)[1])
  assert summary["scored"] == 16 and summary["failed"] == len(broken) + 1
  assert summary["images_per_sec"] > 0


def test_predict_streams_in_input_order_and_holds_at_most_two_batches(reference_run, tmp_path,
                                                                       monkeypatch):
  """predict() over 5+ batches of files with broken ones in between: the
  good ones (PNG and JPEG) get the scores of the batch evaluation path
  (`evaluate_split` on a file split), the broken ones an error row in place,
  and no more than two batches of decoded images are ever held (counted)."""
  from PIL import Image
  from cmfl_jax.data import sources
  from cmfl_jax.data.split import Files, Split
  from cmfl_jax.evaluation import evaluate
  from cmfl_jax.scoring import decisions, files, model as scoring_model
  workdir, _ = reference_run
  config = scoring_model.config_from_checkpoint(workdir, "best")
  batch_size = config.train.eval_batch_size
  good = []
  for i, img in enumerate(sources.load_splits(config.data, ["eval"])[0]["eval"].images):
    good.append(str(tmp_path / f"{i}.{'jpg' if i % 5 == 0 else 'png'}"))
    Image.fromarray(img).save(good[-1])
  broken = write_broken_files(tmp_path)
  paths, kinds = list(good * 3), [None] * 3 * len(good)
  for j, (kind, path) in enumerate(broken.items()):
    paths.insert(7 * j + 2, str(path))
    kinds.insert(7 * j + 2, kind)
  assert len(paths) > 5 * batch_size

  decoded = []
  file_batches = files._file_batches

  def counted(*args):
    for names, images, reasons in file_batches(*args):
      assert len(names) == len(images) == len(reasons) <= batch_size
      decoded.append(len(images))
      yield names, images, reasons

  monkeypatch.setattr(files, "_file_batches", counted)
  predictions = decisions.predict(workdir, paths)
  rows, held = [], []
  for row in predictions.rows:
    rows.append(row)
    held.append(sum(decoded) - len(rows))  # decoded, not yet handed out
  assert len(decoded) > 5 and max(held) <= 2 * batch_size, (decoded, held)
  assert [r["path"] for r in rows] == paths
  assert predictions.classes == ()
  for row, kind in zip(rows, kinds):
    assert "generator" not in row and "generator_confidence" not in row
    if kind is None:
      assert "error" not in row and row["verdict"] in ("real", "synthetic", "unsure")
    else:
      assert row["error"].startswith(BROKEN_REASONS[kind]) and "score" not in row, row

  state, eval_fn, mesh, _, _ = evaluate.restore_for_eval(config, workdir, "best")
  split = Split("files", np.zeros(len(good), np.int32), np.asarray(["x"] * len(good)),
                Files(np.asarray(good)))
  want = evaluate.evaluate_split(eval_fn, state, split, mesh, data=config.data,
                                 batch_size=config.train.eval_batch_size)["scores"]["joint"]
  got = np.asarray([r["score"] for r, kind in zip(rows, kinds) if kind is None])
  np.testing.assert_allclose(got, np.tile(want, 3), atol=1e-6)


def test_predict_loader_decodes_png_as_pil_and_survives_unforeseen_decode_errors(
    tmp_path, monkeypatch):
  """The tf.data loader gives PIL's pixels for 8-bit PNGs of every mode; a
  decode error the checks miss (here: all of them, the truncation check
  switched off) costs only its own row, in place."""
  import ml_collections
  from PIL import Image
  import tensorflow as tf
  from cmfl_jax.data import ops, readers
  from cmfl_jax.scoring import files
  img = np.random.default_rng(2).integers(0, 255, (24, 30, 3), np.uint8)
  good = []
  for mode in ("RGB", "RGBA", "L", "LA", "P"):
    good.append(str(tmp_path / f"{mode}.png"))
    Image.fromarray(img).convert(mode).save(good[-1])
  broken = write_broken_files(tmp_path)
  paths = [good[0], str(broken["truncated PNG"]), *good[1:3], str(broken["truncated JPEG"]),
           *good[3:], str(broken["missing"])]
  data = ml_collections.ConfigDict({"min_side": 0, "max_pixels": 10 ** 8, "image_size": 16,
                                    "aligned": True})
  geometry = ops.Geometry(16, True)
  want = {}
  for path in good:
    with Image.open(path) as im:
      want[path] = np.asarray(ops.resize_and_crop(tf.constant(readers.pil_to_rgb8(im)), geometry))
  for foreseen in (True, False):
    if not foreseen:
      monkeypatch.setattr(files.readers, "truncation", lambda data: None)
    load = files.file_loader(geometry, data)
    out = [(n, i, r) for names, images, reasons in files._file_batches(paths, load, 3)
           for n, i, r in zip(names, images, reasons)]
    assert [n for n, _, _ in out] == paths
    for name, image, reason in out:
      if name in want:
        assert reason == "" and np.array_equal(image, want[name]), name
      elif name.endswith("missing.jpg"):
        assert reason == "missing file"
      else:
        assert reason.startswith("not a readable image (truncated" if foreseen
                                 else "not a readable image (TF: "), reason


def test_predict_on_a_workdir_without_checkpoints(tmp_path):
  (tmp_path / "x.png").write_bytes(b"")
  for args, code, text in [([f"--workdir={tmp_path}"], 1, "no checkpoints"),
                           ([f"--workdir={tmp_path}", "--wrkdir=x"], 2, "wrkdir")]:
    proc = subprocess.run([sys.executable, "-m", "cmfl_jax.predict", *args, str(tmp_path / "x.png")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert any(l.startswith("error:") and text in l for l in proc.stderr.splitlines())


def test_predict_align_scores_raw_photographs_and_reports_no_face(reference_run, tmp_path):
  """predict --align: photographs are detected and aligned (as cmfl_jax.align
  does) before scoring; rows carry the face box, photographs without a face
  get a "no face" row and the others are still scored."""
  import csv
  import io
  pytest.importorskip("mtcnn")
  skdata = pytest.importorskip("skimage.data")
  from PIL import Image
  workdir, _ = reference_run
  Image.fromarray(skdata.astronaut()).save(tmp_path / "astronaut.png")
  noise = np.random.default_rng(1).integers(0, 255, (120, 150, 3), np.uint8)
  Image.fromarray(noise).save(tmp_path / "noise.png")
  proc = subprocess.run(
      [sys.executable, "-m", "cmfl_jax.predict", f"--workdir={workdir}", "--align",
       str(tmp_path / "astronaut.png"), str(tmp_path / "noise.png")],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"))
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  rows = {os.path.basename(r["path"]): r for r in csv.DictReader(io.StringIO(proc.stdout))}
  face = rows["astronaut.png"]
  assert 0.0 <= float(face["score"]) <= 1.0 and face["verdict"] in ("real", "synthetic", "unsure")
  assert len(face["face_box"].split()) == 4 and float(face["face_score"]) > 0.9
  assert face["faces_found"] == "1"
  assert rows["noise.png"]["score"] == rows["noise.png"]["verdict"] == ""
  assert rows["noise.png"]["error"].startswith("no face")


def test_predict_names_the_generator_or_unknown(attribution_run, attribution_reference, tmp_path):
  """With the attribution head: rows carry the generator the checkpoint's
  dev-fitted open-set rule decides (`openset.decide` on the logits of the
  evaluation path, not predict's); on a copy whose threshold is moved to the
  middle of the images' energies (dev.json overrides the checkpoint's meta)
  some images are "unknown", and the CSV has both columns."""
  import csv
  import io
  import shutil
  from cmfl_jax import predict
  from cmfl_jax.attribution import openset
  from cmfl_jax.scoring import decisions
  from cmfl_jax.training import checkpointing
  from helpers import energy_cut
  ref = attribution_reference
  classes = ref["fitted"]["classes"]
  assert classes == ["bona_fide", "stripes", "upsample2"]
  predictions = decisions.predict(attribution_run[0], ref["paths"], stability=())
  rows = list(predictions.rows)
  assert predictions.classes == tuple(classes)
  index, confidence = openset.decide(ref["logits"], ref["fitted"])
  assert [r["generator"] for r in rows] == openset.names(index, classes)
  np.testing.assert_allclose([r["generator_confidence"] for r in rows], confidence, atol=1e-6)
  np.testing.assert_allclose([r["score"] for r in rows], ref["joint"], atol=1e-6)

  workdir = str(tmp_path / "run")
  shutil.copytree(attribution_run[0], workdir)
  kind, step = checkpointing.select_step(workdir, "best")
  manager = checkpointing.make_managers(workdir)[kind]
  cut = {**ref["fitted"], "threshold": energy_cut(ref["logits"])}
  checkpointing.write_dev(manager, step, {**checkpointing.read_dev(manager, step),
                                          "attribution": cut})
  out = io.StringIO()
  predictions = decisions.predict(workdir, [*ref["paths"], str(tmp_path / "missing.png")],
                                  stability=())
  assert predict.write_csv(predictions, False, out) == (len(ref["paths"]), 1)
  assert out.getvalue().splitlines()[0] == (
      "path,score,verdict,reason,p_real_platt,generator,generator_confidence,error")
  rows = list(csv.DictReader(io.StringIO(out.getvalue())))
  assert rows[-1]["error"] == "missing file" and rows[-1]["verdict"] == ""
  assert rows[-1]["generator"] == rows[-1]["generator_confidence"] == ""
  index, confidence = openset.decide(ref["logits"], cut)
  named = openset.names(index, classes)
  assert [r["generator"] for r in rows[:-1]] == named
  assert "unknown" in named and set(named) - {"unknown"}
  np.testing.assert_allclose([float(r["generator_confidence"]) for r in rows[:-1]], confidence,
                             atol=2e-6)
