"""Input pipeline: sources, decoding of odd images, bad data, augmentation
statistics, determinism/resume, per-host slicing, training from each source."""

import csv
import json
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cmfl_jax.data import ops, pipeline, readers, sources
from cmfl_jax.data import split as split_lib


def data_config(**kw):
  cfg = ml_collections.ConfigDict(dict(
      source="csv", data_root="", protocol_dir="", train_split="train", val_split="dev",
      eval_splits=("eval",), image_size=32, aligned=True, balance="oversample",
      augment_prob=0.5, verify="decode", min_side=16, max_pixels=64_000_000, toy_seed=0,
      toy_sizes={"default": 16}, tfds_name="cmfl_faces", tfds_data_dir="", cache=False,
      reencode="", align=""))
  cfg.update(kw)
  return cfg


def _img(rng, size=40):
  return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_dataset(root, n_per_class=4, size=40, seed=0):
  """root/data/{real,fake}/..., root/protocols/p/{train,dev,eval}.csv (official format)."""
  rng = np.random.default_rng(seed)
  rows = {s: [] for s in ("train", "dev", "eval")}
  for split in rows:
    for cls, attack, ext in (("real", "", "png"), ("fake", "stylegan2", "jpg")):
      for i in range(n_per_class):
        rel = f"{split}/{cls}/{i}.{ext}"
        os.makedirs(os.path.join(root, "data", split, cls), exist_ok=True)
        Image.fromarray(_img(rng, size)).save(os.path.join(root, "data", rel), quality=95)
        rows[split].append((f"s{i}", rel, attack))
  proto = os.path.join(root, "protocols", "p")
  os.makedirs(proto, exist_ok=True)
  for split, rs in rows.items():
    with open(os.path.join(proto, f"{split}.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["subject", "filename", "attack_type"])
      w.writerows(rs)
  return os.path.join(root, "data"), proto


# ---- protocol CSVs ------------------------------------------------------------
def test_protocol_csv_labels_and_generators(tmp_path):
  data_root, proto = write_dataset(str(tmp_path))
  split = readers.read_protocol_csv(os.path.join(proto, "train.csv"), data_root)
  assert len(split) == 8 and split.name == "train"
  assert list(split.labels) == [1] * 4 + [0] * 4
  assert set(split.generators) == {"real", "stylegan2"}
  assert all(os.path.isabs(p) for p in split.paths)


@pytest.mark.parametrize("content,match", [
    ("name,file,label\na,b.png,\n", r"x.csv:1: header"),
    ("subject,filename\na,b.png\n", r"x.csv:1: header"),
    ("subject,filename,attack_type\na,b.png\n", r"x.csv:2: expected 3 columns"),
    ("subject,filename,attack_type\na,../outside.png,\n", r"x.csv:2: .*escapes the data root"),
    ("subject,filename,attack_type\na,/etc/passwd,\n", r"x.csv:2: absolute path"),
    ("subject,filename,attack_type\na,sub/../../b.png,\n", r"x.csv:2: .*escapes"),
    ("subject,filename,attack_type\n", r"no examples"),
])
def test_bad_protocol_csv(tmp_path, content, match):
  path = tmp_path / "x.csv"
  path.write_text(content)
  with pytest.raises(split_lib.DataError, match=match):
    readers.read_protocol_csv(str(path), str(tmp_path / "root"))


def test_missing_protocol_file(tmp_path):
  with pytest.raises(split_lib.DataError, match="protocol file not found"):
    readers.read_protocol_csv(str(tmp_path / "nope.csv"), str(tmp_path))


def test_split_without_one_class_is_an_error(tmp_path):
  data_root, proto = write_dataset(str(tmp_path))
  rows = open(os.path.join(proto, "train.csv")).read().splitlines()
  (tmp_path / "only_real.csv").write_text("\n".join(r for r in rows if not r.endswith("stylegan2")))
  split = readers.read_protocol_csv(str(tmp_path / "only_real.csv"), data_root)
  with pytest.raises(split_lib.DataError, match="no attack"):
    split.check_both_classes()


# ---- bad files ----------------------------------------------------------------
def test_bad_files_are_skipped_and_reported(tmp_path):
  data_root, proto = write_dataset(str(tmp_path))
  d = os.path.join(data_root, "bad")
  os.makedirs(d)
  rng = np.random.default_rng(1)
  Image.fromarray(_img(rng, 64)).save(os.path.join(d, "full.jpg"))
  Image.fromarray(_img(rng, 64)).save(os.path.join(d, "full.png"))
  good_jpg = open(os.path.join(d, "full.jpg"), "rb").read()
  good_png = open(os.path.join(d, "full.png"), "rb").read()
  open(os.path.join(d, "trunc.jpg"), "wb").write(good_jpg[: len(good_jpg) // 2])
  open(os.path.join(d, "trunc.png"), "wb").write(good_png[: len(good_png) // 2])
  open(os.path.join(d, "empty.png"), "wb").close()
  open(os.path.join(d, "text.png"), "w").write("not an image at all")
  Image.fromarray(_img(rng, 8)).save(os.path.join(d, "tiny.png"))
  Image.new("1", (9000, 9000)).save(os.path.join(d, "bomb.png"))  # 81 Mpx, ~10 kB
  Image.fromarray(_img(rng, 40)).save(os.path.join(d, "pic.tiff"))
  bad = ["trunc.jpg", "trunc.png", "empty.png", "text.png", "tiny.png", "bomb.png", "pic.tiff",
         "missing.png"]
  with open(os.path.join(proto, "train.csv"), "a", newline="") as f:
    w = csv.writer(f)
    for name in bad:
      w.writerow(["x", f"bad/{name}", "stylegan2"])
  cfg = data_config(data_root=data_root, protocol_dir=proto)
  splits, skipped = sources.load_splits(cfg)
  assert len(splits["train"]) == 8  # only the good ones remain
  reasons = {os.path.basename(s["path"]): s["reason"] for s in skipped}
  assert set(reasons) == set(bad)
  assert "missing" in reasons["missing.png"]
  assert "0-byte" in reasons["empty.png"]
  assert "not a readable image" in reasons["text.png"]
  assert "not a readable image" in reasons["trunc.jpg"]
  assert "not a readable image" in reasons["trunc.png"]
  assert "too small" in reasons["tiny.png"]
  assert "too large" in reasons["bomb.png"]
  assert "unsupported image format TIFF" in reasons["pic.tiff"]
  pipeline.report_skipped(skipped, str(tmp_path / "run"))
  report = json.load(open(tmp_path / "run" / "data_report.json"))
  assert report["skipped_per_split"] == {"train": len(bad)}
  # The remaining split trains through a whole epoch without errors.
  ds = pipeline.train_dataset(splits["train"], cfg, 4, seed=0, epoch=0)
  assert sum(1 for _ in ds) == 2


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK-jpeg"])
def test_odd_image_modes_decode_to_rgb8(tmp_path, mode):
  rng = np.random.default_rng(2)
  base = Image.fromarray(_img(rng, 24))
  if mode == "I;16":
    arr = (rng.integers(0, 65536, (24, 24))).astype(np.uint16)
    im, path = Image.fromarray(arr), str(tmp_path / "x.png")
  elif mode == "CMYK-jpeg":
    im, path = base.convert("CMYK"), str(tmp_path / "x.jpg")
  else:
    im, path = base.convert(mode), str(tmp_path / "x.png")
  im.save(path)
  got = ops.decode_image(tf.io.read_file(path)).numpy()
  assert got.shape == (24, 24, 3) and got.dtype == np.uint8
  with Image.open(path) as reread:
    want = readers.pil_to_rgb8(reread)
  # TF and PIL agree up to rounding (16-bit scaling, CMYK conversion).
  assert np.abs(got.astype(int) - want.astype(int)).max() <= (40 if "CMYK" in mode else 1)


# ---- image folders and TFDS ---------------------------------------------------
def write_folders(root, seed=0):
  rng = np.random.default_rng(seed)
  for split in ("train", "dev", "eval"):
    for gen in ("real", "progan", "stylegan2"):
      os.makedirs(os.path.join(root, split, gen, "sub"), exist_ok=True)
      for i in range(4 if gen == "real" else 2):
        Image.fromarray(_img(rng)).save(os.path.join(root, split, gen, "sub", f"{i}.png"))
  return root


def test_image_folder_source(tmp_path):
  root = write_folders(str(tmp_path))
  split = readers.read_image_folder(root, "train")
  assert len(split) == 8
  assert sorted(set(split.generators)) == ["progan", "real", "stylegan2"]
  assert np.all(split.labels == (split.generators == "real"))
  with pytest.raises(split_lib.DataError, match="not found"):
    readers.read_image_folder(root, "test")


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_tfds_builder_prepares_and_feeds_pipeline(tmp_path, file_format):
  import tensorflow_datasets as tfds
  from cmfl_jax.data import tfds_faces
  manual = write_folders(str(tmp_path / "manual"))
  data_dir = str(tmp_path / "tfds")
  builder = tfds.builder("cmfl_faces", data_dir=data_dir)
  builder.download_and_prepare(file_format=file_format,
                               download_config=tfds.download.DownloadConfig(manual_dir=manual))
  assert set(builder.info.splits) == {"train", "dev", "eval"}
  if file_format == "tfrecord":
    ex = next(iter(tfds.load("cmfl_faces", split="train", data_dir=data_dir)))
  else:
    ex = tfds.data_source("cmfl_faces", split="train", data_dir=data_dir)[0]
  assert ex["image"].shape[-1] == 3 and ex["image"].dtype == np.uint8
  cfg = data_config(source="tfds", tfds_data_dir=data_dir)
  split = tfds_faces.load_split(cfg, "train")
  assert len(split) == 8 and split.labels.sum() == 4
  assert set(split.generators) == {"real", "progan", "stylegan2"}
  # The pipeline yields the very pixels of the source files.
  folder = readers.read_image_folder(manual, "train")
  files = {tuple(np.asarray(Image.open(p)).ravel()[:64]): np.asarray(Image.open(p))
           for p in folder.paths}
  batch = next(iter(pipeline.eval_dataset(split, data_config(image_size=40), 4)))
  for img in batch["image"].numpy():
    np.testing.assert_array_equal(img, files[tuple(img.ravel()[:64])])
  with pytest.raises(split_lib.DataError, match="no split"):
    tfds_faces.load_split(cfg, "test")


# ---- augmentation ---------------------------------------------------------------
def test_augmentation_statistics():
  n = 2000
  params = [ops.augment_params(tf.constant([7, i], tf.int64), 0.5) for i in range(n)]
  blur = np.array([bool(p["blur"]) for p in params])
  jpeg = np.array([bool(p["jpeg"]) for p in params])
  flip = np.array([bool(p["flip"]) for p in params])
  sigma = np.array([float(p["sigma"]) for p in params])
  quality = np.array([int(p["quality"]) for p in params])
  # Binomial(2000, 0.5): 4.5 standard deviations = 0.05.
  for flags in (blur, jpeg, flip):
    assert abs(flags.mean() - 0.5) < 0.05
  assert abs(np.mean(blur & jpeg) - 0.25) < 0.05  # independent draws
  assert sigma.min() >= 0 and sigma.max() <= 2 and abs(sigma.mean() - 1.0) < 0.05
  assert set(quality) == {60, 70, 80, 90, 100}
  counts = np.bincount(quality // 10)[6:]
  assert counts.min() > n / 5 * 0.8
  # prob=0 never blurs or re-encodes.
  p0 = [ops.augment_params(tf.constant([1, i], tf.int64), 0.0) for i in range(50)]
  assert not any(bool(p["blur"]) or bool(p["jpeg"]) for p in p0)


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 9, 3), (30, 34, 3), (70, 5, 3), (67, 96, 3)])
def test_gaussian_blur_matches_scipy(shape):
  """Over the whole sigma range (radius 0..8), borders included, on sizes that
  are smaller than the kernel (reflected more than once) and larger."""
  from scipy.ndimage import gaussian_filter
  img = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
  for sigma in [0.0, 0.1, 0.13, 0.4, 0.63, 1.0, 1.37, 1.7, 2.0]:
    got = ops.gaussian_blur(tf.constant(img), tf.constant(sigma)).numpy().astype(int)
    want = gaussian_filter(img.astype(float), (sigma, sigma, 0), mode="reflect", truncate=4.0)
    assert np.abs(got - np.round(want)).max() <= 1, sigma
    if sigma == 0:
      np.testing.assert_array_equal(got, img)


def test_augment_applies_jpeg_and_flip():
  img = tf.constant(np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8))
  changed = 0
  for i in range(40):
    seed = tf.constant([3, i], tf.int64)
    p = ops.augment_params(seed, 0.5)
    out = ops.augment(img, seed, 0.5).numpy()
    if not (bool(p["blur"]) or bool(p["jpeg"])):
      want = img.numpy()[:, ::-1] if bool(p["flip"]) else img.numpy()
      np.testing.assert_array_equal(out, want)
    else:
      changed += 1
  assert changed > 10


# ---- order, determinism, resume, sharding --------------------------------------
def _indices(ds):
  return np.concatenate([b["index"].numpy() for b in ds])


def test_train_order_is_seeded_and_resume_skips_exactly():
  split = sources.toy_split("train", 40, 16, seed=0)
  cfg = data_config(image_size=16)
  a = list(pipeline.train_dataset(split, cfg, 8, seed=1, epoch=0))
  b = list(pipeline.train_dataset(split, cfg, 8, seed=1, epoch=0))
  assert len(a) == 5
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  resumed = list(pipeline.train_dataset(split, cfg, 8, seed=1, epoch=0, skip_batches=3))
  assert len(resumed) == 2
  for x, y in zip(a[3:], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])  # same augmentation too
  other = _indices(pipeline.train_dataset(split, cfg, 8, seed=1, epoch=1))
  assert not np.array_equal(_indices(a), other)


def test_balancing_modes():
  labels = np.array([1] * 30 + [0] * 10, np.int32)
  over = pipeline.balanced_order(labels, 0, 0, "oversample")
  assert len(over) == 60 and np.sum(labels[over] == 0) == 30
  assert set(np.flatnonzero(labels == 0)) <= set(over) and set(np.flatnonzero(labels == 1)) <= set(over)
  trunc = pipeline.balanced_order(labels, 0, 0, "truncate")
  assert len(trunc) == 20 and np.sum(labels[trunc] == 1) == 10
  assert len(pipeline.balanced_order(labels, 0, 0, "none")) == 40


@pytest.mark.parametrize("nproc", [1, 2, 3])
def test_eval_covers_every_example_once_across_processes(monkeypatch, nproc):
  split = sources.toy_split("eval", 23, 16, seed=0)
  cfg = data_config(image_size=16)
  seen, masks = [], []
  for pid in range(nproc):
    monkeypatch.setattr(pipeline.jax, "process_count", lambda: nproc)
    monkeypatch.setattr(pipeline.jax, "process_index", lambda pid=pid: pid)
    batches = list(pipeline.eval_dataset(split, cfg, 2 * nproc * 2))
    idx = np.concatenate([b["index"].numpy() for b in batches])
    m = np.concatenate([b["mask"].numpy() for b in batches])
    seen.append(idx[m])
    masks.append(m)
  allseen = np.concatenate(seen)
  assert sorted(allseen) == list(range(23))  # each exactly once
  assert sum(int((~m).sum()) for m in masks) == (-23) % (4 * nproc)


def test_train_slices_are_disjoint_across_processes(monkeypatch):
  split = sources.toy_split("train", 48, 16, seed=0)
  cfg = data_config(image_size=16)
  parts = []
  for pid in range(2):
    monkeypatch.setattr(pipeline.jax, "process_count", lambda: 2)
    monkeypatch.setattr(pipeline.jax, "process_index", lambda pid=pid: pid)
    parts.append(_indices(pipeline.train_dataset(split, cfg, 8, seed=0, epoch=0)))
  order = pipeline.balanced_order(split.labels, 0, 0, "oversample")
  together = np.stack([p.reshape(-1, 4) for p in parts], 1).reshape(-1)
  np.testing.assert_array_equal(together, order[:len(together)])


def test_unaligned_geometry():
  img = tf.constant(np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8))
  seed = tf.constant([1, 2], tf.int64)
  ev = ops.resize_and_crop(img, ops.Geometry(224, aligned=False), train=False)
  tr = ops.resize_and_crop(img, ops.Geometry(224, aligned=False), train=True, seed=seed)
  assert ev.shape == (224, 224, 3) and tr.shape == (224, 224, 3)
  # Eval: shorter side 256 -> 256x341, centre 224 crop = rows 16..240.
  full = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(img, [256, 341], antialias=True)),
                                  0, 255), tf.uint8)
  np.testing.assert_array_equal(ev.numpy(), full.numpy()[16:240, 58:282])
  al = ops.resize_and_crop(img, ops.Geometry(64, aligned=True), train=True, seed=seed)
  assert al.shape == (64, 64, 3)


def test_pipeline_benchmark_runs(tmp_path):
  from cmfl_jax.bench import input as benchmark
  split = benchmark.write_image_split(str(tmp_path), "png", 8, 32)
  assert len(split) == 8 and all(os.path.exists(p) for p in split.paths)
  ips, build_s = benchmark.pipeline_throughput(split, benchmark.pipeline_config(32), True, 4, 1, 1)
  assert ips > 0 and build_s > 0


def test_unaligned_train_pipeline_order_and_shape(tmp_path):
  rng = np.random.default_rng(6)
  paths = []
  for i in range(4):
    p = str(tmp_path / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(p)
    paths.append(p)
  split = split_lib.Split("t", np.array([0, 1, 0, 1], np.int32), np.array(["f", "real"] * 2),
                          split_lib.Files(np.asarray(paths)))
  cfg = data_config(image_size=32, aligned=False)
  batch = next(iter(pipeline.train_dataset(split, cfg, 4, seed=0, epoch=0)))
  assert batch["image"].shape == (4, 32, 32, 3)
  ev = next(iter(pipeline.eval_dataset(split, cfg, 4)))
  want = ops.resize_and_crop(tf.io.decode_png(tf.io.read_file(paths[0])), ops.Geometry(32, False))
  np.testing.assert_array_equal(ev["image"][0], want)


def test_toy_splits_depend_on_name_not_on_which_are_loaded():
  cfg = data_config(source="toy", image_size=16, verify="none")
  full, _ = sources.load_splits(cfg)
  only_eval, _ = sources.load_splits(cfg, ["eval"])
  np.testing.assert_array_equal(full["eval"].images, only_eval["eval"].images)
  assert not np.array_equal(full["train"].images, full["eval"].images)


def test_images_smaller_than_the_crop_are_skipped_by_default(tmp_path):
  data_root, proto = write_dataset(str(tmp_path), size=40)
  cfg = data_config(data_root=data_root, protocol_dir=proto, image_size=48, min_side=-1)
  with pytest.raises(split_lib.DataError, match="no bona fide"):  # every 40px image is skipped
    sources.load_splits(cfg)
  cfg.image_size = 40
  splits, skipped = sources.load_splits(cfg)
  assert not skipped and len(splits["train"]) == 8


def test_cache_decodes_once_and_gives_identical_batches(tmp_path):
  data_root, proto = write_dataset(str(tmp_path), size=32)
  cfg = data_config(data_root=data_root, protocol_dir=proto)
  files, _ = sources.load_splits(cfg)
  cfg.cache = True
  cached, _ = sources.load_splits(cfg)
  assert cached["train"].paths is None and cached["train"].images.shape == (8, 32, 32, 3)
  a = next(iter(pipeline.train_dataset(files["train"], cfg, 4, seed=0, epoch=0)))
  b = next(iter(pipeline.train_dataset(cached["train"], cfg, 4, seed=0, epoch=0)))
  np.testing.assert_array_equal(a["image"], b["image"])


# ---- test-time post-processing (robustness) ------------------------------------
@pytest.mark.parametrize("bad", ["jpeg", "jpeg:0", "jpeg:70.5", "blur:3", "blur:-1",
                                 "resize:1", "noise:0", "noise:x", "sharpen:1", "none:1"])
def test_bad_conditions_are_rejected(bad):
  with pytest.raises(ValueError, match="condition"):
    ops.parse_condition(bad)


def test_postprocess_conditions():
  rng = np.random.default_rng(5)
  img = tf.constant(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
  seed = tf.constant([0, 7], tf.int64)
  np.testing.assert_array_equal(ops.postprocess(img, "none", seed), img)
  np.testing.assert_array_equal(ops.postprocess(img, "jpeg:50", seed),
                                tf.image.adjust_jpeg_quality(img, 50))
  np.testing.assert_array_equal(ops.postprocess(img, "blur:1", seed),
                                ops.gaussian_blur(img, tf.constant(1.0)))
  # Down-up resizing keeps the shape and removes detail (white noise loses power).
  down_up = ops.postprocess(img, "resize:0.5", seed).numpy().astype(float)
  assert down_up.shape == (40, 40, 3)
  assert np.std(down_up) < 0.8 * np.std(img.numpy())
  # Noise: deterministic per seed, different across seeds, right size.
  flat = tf.fill([64, 64, 3], tf.constant(128, tf.uint8))
  a = ops.postprocess(flat, "noise:5", seed).numpy().astype(float)
  np.testing.assert_array_equal(a, ops.postprocess(flat, "noise:5", seed))
  assert not np.array_equal(a, ops.postprocess(flat, "noise:5", tf.constant([0, 8], tf.int64)))
  assert 4.5 < np.std(a) < 5.5 and abs(np.mean(a) - 128) < 0.5


def test_eval_dataset_applies_the_condition_to_every_example():
  split = sources.toy_split("eval", 6, 16, seed=0)
  cfg = data_config(image_size=16)
  clean = np.concatenate([b["image"].numpy() for b in pipeline.eval_dataset(split, cfg, 4)])
  noisy = [b for b in pipeline.eval_dataset(split, cfg, 4, "jpeg:50")]
  images = np.concatenate([b["image"].numpy() for b in noisy])
  np.testing.assert_array_equal(clean[:6], split.images)
  for i in range(6):
    np.testing.assert_array_equal(images[i], tf.image.adjust_jpeg_quality(split.images[i], 50))
  with pytest.raises(ValueError, match="condition"):
    pipeline.eval_dataset(split, cfg, 4, "jpeg:500")


def test_reencode_gives_every_training_image_the_same_storage(tmp_path):
  """data.reencode='jpeg:Q': each training image is the libjpeg re-encoding of
  the stored one (then augmented; here no blur/JPEG, so only flips remain)."""
  data_root, proto = write_dataset(str(tmp_path), size=32)
  split = readers.read_protocol_csv(os.path.join(proto, "train.csv"), data_root)
  cfg = data_config(augment_prob=0.0, reencode="jpeg:80", balance="none")
  batch = next(iter(pipeline.train_dataset(split, cfg, len(split), seed=0, epoch=0)))
  for img, index in zip(batch["image"], batch["index"]):
    stored = ops.decode_image(tf.io.read_file(split.paths[index]))
    want = tf.io.decode_jpeg(tf.io.encode_jpeg(stored, quality=80, chroma_downsampling=True))
    assert (np.array_equal(img, want) or np.array_equal(img, want[:, ::-1])), index
    assert not np.array_equal(img, stored) and not np.array_equal(img, stored.numpy()[:, ::-1])
  with pytest.raises(ValueError, match="data.reencode"):
    ops.parse_reencode("png:3")


def test_input_config_is_parsed_once_and_checked():
  """The pipeline's typed view of `config.data` (issue #37 item 5): made once,
  bad values refused at the boundary, and the ConfigDict form still accepted."""
  cfg = data_config(reencode="jpeg:90", randomize="jpeg", randomize_prob=0.3)
  inputs = pipeline.InputConfig.from_config(cfg)
  assert inputs.geometry == ops.Geometry(32, True) and inputs.reencode_quality == 90
  assert inputs.randomization.groups == ("jpeg",) and inputs.randomization.prob == 0.3
  assert pipeline.InputConfig.of(inputs) is inputs
  assert pipeline.InputConfig.of(cfg) == inputs
  with pytest.raises(ValueError, match="reencode"):
    pipeline.InputConfig.from_config(data_config(reencode="png"))
