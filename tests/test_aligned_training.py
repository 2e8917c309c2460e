"""Learning the generator, not the camera (issue #38): aligned training fakes
of the benchmark, pairs in protocol CSVs and folders, paired batches with
the same augmentation, processing randomised on both classes, and the
leave-one-camera-out validation."""

import csv
import hashlib
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cmfl_jax.data import pipeline, randomize, readers
from cmfl_jax.data import split as split_lib
from cmfl_jax.data.synthetic import builder as sf_builder
from cmfl_jax.data.synthetic import holdout, sampler, simulate, v2


def _text(value):
  return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
  return sf_builder.prepare("s16_t6_d4_e2", str(tmp_path_factory.mktemp("tfds")))


# ---- aligned fakes of the benchmark --------------------------------------------------
@pytest.mark.parametrize("mode", v2.ALIGNED_MODES)
def test_an_aligned_fake_is_its_stored_real_re_rendered(tiny_benchmark, mode):
  stored = {_text(r["filename"]): r["image"]
            for r in tiny_benchmark.as_data_source(split=f"dcgan_{mode}_train")}
  reals = {_text(r["filename"]): r["image"]
           for r in tiny_benchmark.as_data_source(split="real_train")}
  assert len(stored) == len(reals) == 6
  for name, image in stored.items():
    i = int(name.split("/")[-1][:6])
    real, _, face = sampler.stored_real("train", 16, 0, i)
    np.testing.assert_array_equal(reals[sampler.made_from(name)], real)  # the stored real
    # Recomputed from the stored real with the family's operators: the same pixels.
    rng = np.random.default_rng([0, simulate.SPLIT_SEED["train"],
                                 sampler._ALIGNED_SEED[f"dcgan_{mode}"], i])
    fake = v2.aligned_fake("dcgan", mode, real, face, rng)
    np.testing.assert_array_equal(image, simulate.store(np.round(fake * 255).astype(np.uint8),
                                                        rng))


def test_inpainting_keeps_the_background_and_changes_the_face():
  real, _, face = sampler.stored_real("train", 64, 0, 3)
  inpaint = v2.aligned_fake("stylegan2", "inpaint", real, face, np.random.default_rng(1))
  recon = v2.aligned_fake("stylegan2", "recon", real, face, np.random.default_rng(1))
  alpha = v2.face_blend_mask(face)[..., 0]
  outside, inside = alpha == 0, alpha == 1
  assert outside.mean() > 0.3 and (inside == face).all() and face.mean() > 0.1
  np.testing.assert_array_equal(inpaint[outside], real[outside] / 255.0)  # untouched
  np.testing.assert_array_equal(inpaint[inside], recon[inside])  # re-rendered inside
  assert np.abs(recon - real / 255.0)[outside].mean() > 1e-3  # recon changes everything


# sha256 of the first 3 images per source at 16x16, as the landed code before
# issue #38 (be10059) generates them for version 2.0.0.
PINNED = {"eval": "5bb36cfaddb495b1bd50ab6dfbc8b50dc22ffeb958d4dfd3d9350e3dcdbc25b9",
          "train": "eb9c2c4e728c1277e96d1645acfe6216665ca4a1d71652ff30b0ccc4d04b9f8f"}


def test_version_2_1_keeps_every_2_0_split_pixel_for_pixel():
  """The evaluation splits (and every 2.0.0 split) are the published pixels."""
  def digest(version, split):
    h = hashlib.sha256()
    for source in simulate.REAL_SOURCES + simulate.FAMILIES:
      if source == "real2" and split != "eval":
        continue
      for img in sampler.sample(source, split, 3, 16, version=version, workers=1):
        h.update(img.tobytes())
    return h.hexdigest()
  for split in ("eval", "train"):
    assert digest("2.1.0", split) == digest("2.0.0", split) == PINNED[split]
  with pytest.raises(ValueError, match="unknown source"):
    next(sampler.sample("dcgan_recon", "train", 1, 16, version="2.0.0"))
  with pytest.raises(ValueError, match="only the splits"):
    next(sampler.sample("dcgan_recon", "eval", 1, 16))


def test_benchmark_splits_pair_each_fake_with_its_real(tiny_benchmark):
  from cmfl_jax.data import tfds_faces
  name = "real_train+swagan_recon_train+swagan_inpaint_train"
  split = tfds_faces.split_from_builder(tiny_benchmark, name, sampler.made_from)
  names = tfds_faces.filenames(tiny_benchmark, name)
  assert split.num_pairs() == 12
  assert set(split.generators) == {"real", "swagan"}  # the family, however the fake was made
  for i in np.flatnonzero(split.made_from >= 0):
    assert names[split.made_from[i]] == sampler.made_from(names[i])
    assert split.labels[i] == 0 and split.labels[split.made_from[i]] == 1
  # A slice without the reals leaves its fakes unpaired, not an error.
  alone = tfds_faces.split_from_builder(tiny_benchmark, "swagan_recon_train+real_dev",
                                        sampler.made_from)
  assert alone.num_pairs() == 0


# ---- pairs in protocol CSVs and folders ----------------------------------------------
def _write_pairs(root, rows, header=("subject", "filename", "attack_type", "made_from")):
  rng = np.random.default_rng(0)
  for row in rows:
    path = os.path.join(root, "data", row[1])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
  csv_path = os.path.join(root, "train.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return csv_path, os.path.join(root, "data")


def test_protocol_csv_made_from_round_trip_and_old_csvs(tmp_path):
  rows = [("s0", "real/a.png", "", ""), ("s1", "real/b.png", "", ""),
          ("s0", "fake/a_recon.png", "sd_vae", "real/a.png"),
          ("s1", "fake/b_inpaint.png", "sd_inpaint", "real/b.png"),
          ("s2", "fake/other.png", "stylegan2", "")]
  csv_path, root = _write_pairs(str(tmp_path / "new"), rows)
  split = readers.read_protocol_csv(csv_path, root)
  assert list(split.made_from) == [-1, -1, 0, 1, -1]
  assert list(split.generators) == ["real", "real", "sd_vae", "sd_inpaint", "stylegan2"]
  # Dropping a real (e.g. an unreadable file) leaves its fake unpaired, indices follow.
  kept = split.select(np.array([True, False, True, True, True]))
  assert list(kept.made_from) == [-1, 0, -1, -1]
  # The official 3-column format loads as before, without pairs.
  old_path, old_root = _write_pairs(str(tmp_path / "old"), [r[:3] for r in rows],
                                    header=("subject", "filename", "attack_type"))
  old = readers.read_protocol_csv(old_path, old_root)
  assert old.made_from is None and list(old.labels) == [1, 1, 0, 0, 0]


@pytest.mark.parametrize("rows,match", [
    ([("s0", "real/a.png", "", ""), ("s0", "fake/a.png", "vae", "real/missing.png")],
     "not in the split"),
    ([("s0", "fake/b.png", "vae", ""), ("s0", "fake/a.png", "vae", "fake/b.png")],
     "must be a synthetic image made from a bona fide one"),
    ([("s0", "real/a.png", "", ""), ("s0", "fake/a.png", "vae", "../../etc/passwd")],
     "escapes the data root"),
])
def test_bad_pairs_say_which_line(tmp_path, rows, match):
  csv_path, root = _write_pairs(str(tmp_path), rows)
  with pytest.raises(split_lib.DataError, match=match):
    readers.read_protocol_csv(csv_path, root)


def test_folder_layout_pairs_from_made_from_csv(tmp_path):
  rng = np.random.default_rng(0)
  for rel in ("real/x.png", "real/y.png", "vae/x.png", "gan/z.png"):
    path = tmp_path / "train" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
  assert readers.read_image_folder(str(tmp_path), "train").made_from is None
  (tmp_path / "train" / "made_from.csv").write_text("fake,made_from\nvae/x.png,real/x.png\n")
  split = readers.read_image_folder(str(tmp_path), "train")
  names = [os.path.relpath(p, tmp_path / "train") for p in split.paths]
  pairs = {names[i]: names[j] for i, j in enumerate(split.made_from) if j >= 0}
  assert pairs == {"vae/x.png": "real/x.png"}
  (tmp_path / "train" / "made_from.csv").write_text("fake,made_from\nvae/nope.png,real/x.png\n")
  with pytest.raises(split_lib.DataError, match="not an image of the split"):
    readers.read_image_folder(str(tmp_path), "train")


# ---- paired batches, the same augmentation --------------------------------------------
def _paired_split(n_reals=8, extra_fakes=2):
  """Reals and, for each, one fake with *identical* pixels (so any difference
  after augmentation comes from the augmentation), plus unpaired fakes."""
  rng = np.random.default_rng(0)
  reals = rng.integers(0, 256, (n_reals, 24, 24, 3), dtype=np.uint8)
  others = rng.integers(0, 256, (extra_fakes, 24, 24, 3), dtype=np.uint8)
  images = np.concatenate([reals, reals, others])
  labels = np.array([1] * n_reals + [0] * (n_reals + extra_fakes), np.int32)
  made_from = np.array([-1] * n_reals + list(range(n_reals))
                       + [-1] * extra_fakes)
  return split_lib.Split("train", labels, np.where(labels == 1, "real", "vae"),
                         split_lib.Pixels(images), made_from=made_from)


def test_paired_order_keeps_each_pair_together_and_balanced():
  split = _paired_split(n_reals=9, extra_fakes=0)
  made_from = split.made_from.copy()
  made_from[9 + 9:] = -1
  two_each = np.concatenate([made_from, np.arange(9)])  # a second fake of every real
  labels = np.concatenate([split.labels, np.zeros(9, np.int32)])
  for epoch in range(3):
    order = pipeline.balanced_order(labels, 0, epoch, "oversample", two_each)
    units = order.reshape(-1, 2)
    assert len(units) == 9  # each real once, with one of its fakes
    assert sorted(units[:, 0]) == list(range(9))
    assert all(two_each[f] == r for r, f in units)
  picked = [pipeline.balanced_order(labels, 0, e, "oversample", two_each)[1::2] for e in range(6)]
  assert len({tuple(p) for p in picked}) > 1  # which fake is drawn anew each epoch
  # Without pairs the order is exactly the unpaired one (resume, old runs).
  np.testing.assert_array_equal(pipeline.balanced_order(labels, 0, 1, "oversample", None),
                                pipeline.balanced_order(labels, 0, 1, "oversample"))


def _data_config(**kw):
  cfg = ml_collections.ConfigDict(dict(image_size=24, aligned=True, balance="oversample",
                                       augment_prob=1.0, reencode="", randomize="all",
                                       randomize_prob=1.0))
  cfg.update(kw)
  return cfg


@pytest.mark.parametrize("randomized", ["all", ""])
def test_a_pair_gets_the_same_augmentation_in_the_same_batch(randomized):
  split = _paired_split()
  ds = pipeline.train_dataset(split, _data_config(randomize=randomized), 4, seed=3, epoch=1)
  seen = 0
  for batch in ds.as_numpy_iterator():
    idx, images = batch["index"], batch["image"]
    for row in range(0, len(idx), 2):
      real, fake = idx[row], idx[row + 1]
      if split.made_from[fake] == real:
        np.testing.assert_array_equal(images[row], images[row + 1])
        seen += 1
  assert seen >= 6
  # Augmentation does happen (the images are not the stored ones).
  first = next(ds.as_numpy_iterator())
  assert not np.array_equal(first["image"][0], split.images[first["index"][0]])


def test_unpaired_examples_get_their_own_augmentation():
  """The control: the same pixels under two keys are processed differently,
  so the equality above comes from the shared key."""
  split = _paired_split()
  unpaired = split_lib.Split(split.name, split.labels, split.generators, split.storage)
  ds = pipeline.train_dataset(unpaired, _data_config(), 4, seed=3, epoch=1)
  by_index = {}
  for batch in ds.as_numpy_iterator():
    by_index.update(zip(batch["index"], batch["image"]))
  same = [np.array_equal(by_index[i], by_index[i + 8]) for i in range(8)
          if i in by_index and i + 8 in by_index]
  assert same and not any(same)


# ---- processing randomised on both classes --------------------------------------------
def test_randomisation_is_deterministic_per_seed_and_varied():
  img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  r = randomize.Randomization(randomize.GROUPS, 1.0)
  a, b = r.numpy(img, np.array([5, 7])), r.numpy(img, np.array([5, 7]))
  np.testing.assert_array_equal(a, b)
  outs = [r.numpy(img, np.array([5, s])) for s in range(12)]
  assert len({o.tobytes() for o in outs}) == 12
  assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
  # prob 0: the identity; each group alone changes the image.
  np.testing.assert_array_equal(randomize.Randomization(randomize.GROUPS, 0.0).numpy(
      img, np.array([1, 2])), img)
  for group in randomize.GROUPS:
    assert not np.array_equal(randomize.Randomization((group,), 1.0).numpy(
        img, np.array([1, 2])), img), group


def test_demosaicing_patterns_exclude_the_held_out_camera():
  assert "BGGR" not in randomize.PATTERNS
  flat = np.broadcast_to(np.array([200, 120, 40], np.uint8), (8, 8, 3)).copy()
  for pattern, code in randomize._CODES.items():  # each pattern decodes to its colour
    import cv2
    rgb = cv2.cvtColor(randomize._mosaic(flat, pattern), getattr(cv2, f"COLOR_Bayer{code}2RGB"))
    assert np.abs(rgb[2:6, 2:6].astype(int) - [200, 120, 40]).max() <= 1
  assert set(randomize._CODES) == set(randomize.PATTERNS)


@pytest.mark.parametrize("spec,prob,match", [("camera,sepia", 0.5, "unknown groups"),
                                             ("all", 1.5, "randomize_prob")])
def test_bad_randomisation_settings(spec, prob, match):
  with pytest.raises(ValueError, match=match):
    randomize.from_config(ml_collections.ConfigDict({"randomize": spec, "randomize_prob": prob}))


# ---- leave one camera out -------------------------------------------------------------
def test_leave_one_camera_out_splits_by_the_real_camera(tiny_benchmark):
  from cmfl_jax.data import tfds_faces
  name = "real_train+progan_recon_train+progan_train"
  split = tfds_faces.split_from_builder(tiny_benchmark, name, sampler.made_from)
  names = tfds_faces.filenames(tiny_benchmark, name)
  cameras = holdout.camera_ids(names, split.made_from, 16, 0)
  for i, n in enumerate(names):
    if n.startswith("real/"):
      assert cameras[i] == sampler.camera_of("train", 16, 0, int(n.split("/")[-1][:6]))
    elif n.startswith("progan/"):
      assert cameras[i] == holdout.NO_CAMERA  # not made from a real
    else:  # an aligned fake: its real's camera
      assert cameras[i] == cameras[split.made_from[i]] != holdout.NO_CAMERA
  camera = int(cameras[cameras >= 0][0])
  train = holdout.leave_camera_out(split, cameras, camera, "others")
  val = holdout.leave_camera_out(split, cameras, camera, "held_out")
  assert len(train) + len(val) == len(split) + (cameras == holdout.NO_CAMERA).sum()
  assert (cameras == camera).sum() == len(val) - (cameras == holdout.NO_CAMERA).sum()
  with pytest.raises(split_lib.DataError, match="holdout_camera"):
    holdout.leave_camera_out(split, cameras, 7, "others")
