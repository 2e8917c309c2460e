"""cmfl_jax.data.face_detection: file loading, geometry, and MTCNN detection + alignment
on real photographs that ship inside installed packages (scikit-image's
astronaut, matplotlib's Grace Hopper). No network; detection tests skip where
the `align` extra (mtcnn) or scikit-image is missing. Each photograph is
detected once per module (fixtures) to keep the file short."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from cmfl_jax.data import face_detection as faces, face_geometry

NoFace = faces.NoFace
S = 224


# ----------------------------------------------------------------------------
# Geometry (numpy / PIL only).

def _similarity(angle_deg, scale, tx, ty):
  t = np.deg2rad(angle_deg)
  return np.array([[scale * np.cos(t), -scale * np.sin(t), tx],
                   [scale * np.sin(t), scale * np.cos(t), ty]])


def test_similarity_transform_recovers_a_known_one():
  rng = np.random.default_rng(0)
  src = rng.uniform(0, 500, (5, 2))
  m = _similarity(27.0, 0.37, 12.5, -40.0)
  np.testing.assert_allclose(face_geometry.similarity_transform(src, face_geometry.apply_transform(m, src)), m,
                             atol=1e-9)
  # A mirror image cannot be reached: no reflection in 4 parameters.
  fit = face_geometry.similarity_transform(src, src * [-1, 1])
  assert np.linalg.det(fit[:, :2]) > 0


def test_templates_are_symmetric_and_frame_as_documented():
  for name, t in face_geometry.TEMPLATES.items():
    mirrored = (t * [-1, 1] + [1, 0])[[1, 0, 2, 4, 3]]
    np.testing.assert_allclose(mirrored, t, atol=1e-12, err_msg=name)
  ffhq, arc = face_geometry.TEMPLATES["ffhq"], face_geometry.TEMPLATES["arcface"]
  assert ffhq[1, 0] - ffhq[0, 0] == pytest.approx(0.241, abs=0.002)   # eye distance / side
  assert ffhq[0, 1] == pytest.approx(0.472, abs=0.002)                # eye height
  assert ffhq[3, 1] == pytest.approx(0.750, abs=0.002)                # mouth height
  assert arc[1, 0] - arc[0, 0] == pytest.approx(0.315, abs=0.002)
  np.testing.assert_allclose(face_geometry.face_template("arcface", 112) + 0.5,
                             face_geometry.TEMPLATES["arcface"] * 112)
  with pytest.raises(ValueError):
    face_geometry.face_template("nope")


def test_ffhq_rule_puts_the_mean_face_on_its_template():
  # The FFHQ rule and its documented template agree, whatever the pose/scale.
  template = face_geometry.face_template("ffhq", S)
  for angle, scale in ((0, 1.0), (20, 3.1), (-35, 0.4)):
    m = _similarity(angle, scale, 300, 100)
    landmarks = face_geometry.apply_transform(m, template)
    out = face_geometry.apply_transform(face_geometry.ffhq_matrix(landmarks, S), landmarks)
    np.testing.assert_allclose(out, template, atol=1e-6)


def _blob(h, w, cx, cy, sigma):
  y, x = np.mgrid[0:h, 0:w]
  g = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma * sigma))
  return np.repeat((g * 255).astype(np.uint8)[..., None], 3, 2)


def _peak(img):
  g = img[..., 0].astype(float)
  g = g * (g > 0.5 * g.max())
  y, x = np.mgrid[0:g.shape[0], 0:g.shape[1]]
  return np.array([(g * x).sum() / g.sum(), (g * y).sum() / g.sum()])


@pytest.mark.parametrize("angle,scale", [(0, 1.0), (20, 1.7), (-35, 0.5), (10, 0.15)])
def test_warp_puts_a_source_point_where_the_matrix_says(angle, scale):
  # 0.5 and 0.15 take the antialiased pre-downscale path.
  image = _blob(600, 700, 401.0, 253.0, 2.0 / min(scale, 1.0))
  m = _similarity(angle, scale, 0, 0)
  m[:, 2] += [101.0, 117.0] - face_geometry.apply_transform(m, [[401.0, 253.0]])[0]
  crop = face_geometry.warp(image, m, S)
  assert crop.shape == (S, S, 3) and crop.dtype == np.uint8
  np.testing.assert_allclose(_peak(crop), [101.0, 117.0], atol=0.25)


def test_box_matrix_is_square_with_margin_in_output_pixels():
  m = face_geometry.box_matrix([100, 50, 180, 170], S, margin=24)  # 80 x 120 box
  # The longer side (120) spans S - 24 output pixels, centred.
  assert m[0, 0] == pytest.approx((S - 24) / 120) and m[1, 1] == m[0, 0] and m[0, 1] == 0
  top_left = face_geometry.apply_transform(m, [[140 - 60 - 0.5, 50 - 0.5]])[0]
  np.testing.assert_allclose(top_left, [12 - 0.5, 12 - 0.5], atol=1e-9)


def test_outside_fraction_and_constant_fill():
  image = np.full((100, 100, 3), 200, np.uint8)
  m = face_geometry.box_matrix([-50, 0, 50, 100], 100)  # left half of the crop is off-image
  assert face_geometry.outside_fraction(m, (100, 100), 100) == pytest.approx(0.5, abs=0.011)
  crop = face_geometry.warp(image, m, 100, fill=(0, 0, 255))
  assert (crop[:, :48] == [0, 0, 255]).all() and (crop[:, 52:] == 200).all()


# ----------------------------------------------------------------------------
# Loading: a bad file gives a reason, never an exception.

def _jpeg_bytes(shape=(40, 60)):
  buf = io.BytesIO()
  pixels = np.random.default_rng(0).integers(0, 255, shape + (3,), np.uint8)
  Image.fromarray(pixels).save(buf, "JPEG")
  return buf.getvalue()


def test_load_rgb_reasons(tmp_path):
  def write(name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p

  assert "unreadable" in faces.load_rgb(tmp_path / "missing.jpg").reason
  assert faces.load_rgb(write("empty.jpg", b"")).reason == "empty file"
  assert "not an image" in faces.load_rgb(write("noise.jpg", os.urandom(3000))).reason
  assert "not an image" in faces.load_rgb(write("text.png", b"hello, world\n" * 50)).reason
  assert "truncated" in faces.load_rgb(write("cut.jpg", _jpeg_bytes()[:400])).reason
  big = write("big.jpg", _jpeg_bytes())
  assert "too large" in faces.load_rgb(big, max_pixels=1000).reason
  assert "too large" in faces.load_rgb(big, max_bytes=100).reason
  assert faces.load_rgb(big).shape == (40, 60, 3)
  if os.geteuid() != 0:  # root reads anything
    locked = write("locked.jpg", _jpeg_bytes())
    locked.chmod(0)
    assert "unreadable" in faces.load_rgb(locked).reason


def test_load_rgb_converts_modes_and_applies_exif_orientation(tmp_path):
  gray = tmp_path / "gray.png"
  Image.fromarray(np.arange(30 * 20, dtype=np.uint8).reshape(30, 20) % 250).save(gray)
  rgb = faces.load_rgb(gray)
  assert rgb.shape == (30, 20, 3) and rgb.dtype == np.uint8
  rotated = tmp_path / "rotated.jpg"
  im = Image.fromarray(np.zeros((30, 20, 3), np.uint8))
  exif = im.getexif()
  exif[0x0112] = 6  # "rotate 90 CW to display"
  im.save(rotated, exif=exif)
  assert faces.load_rgb(rotated).shape == (20, 30, 3)


# ----------------------------------------------------------------------------
# Selection and reasons (no detector needed).

def _det(x, y, size, score=0.99):
  box = np.array([x, y, x + size, y + size], float)
  return faces.Detection(box=box, landmarks=np.zeros((5, 2)), score=score)


def test_select_policies_and_reasons():
  s = faces.DetectorSettings()
  big, small_sure = _det(0, 0, 100, 0.9), _det(200, 0, 50, 0.999)
  assert faces._select([], -1.0, s, "largest").reason == "no face found"
  assert faces._select([], 0.5, s, "largest").reason.startswith("below threshold")
  assert faces._select([_det(0, 0, 15)], -1, s, "all").reason.startswith("face too small")
  assert faces._select([small_sure, big], -1, s, "largest") == [big]
  assert faces._select([small_sure, big], -1, s, "most_confident") == [small_sure]
  assert faces._select([small_sure, big], -1, s, "all") == [big, small_sure]
  assert faces._select([small_sure, big], -1, s, "skip_multiple").reason.startswith("several faces")
  assert faces._select([big], -1, s, "skip_multiple") == [big]


def test_detector_settings_validate():
  assert faces.DetectorSettings().thresholds == (0.6, 0.7, 0.7)
  for bad in (dict(thresholds=(0.6, 0.7)), dict(thresholds=(0.6, 0.7, 1.5)),
              dict(scale_factor=1.0), dict(min_face_size=0), dict(detect_max_side=5)):
    with pytest.raises(ValueError):
      faces.DetectorSettings(**bad)


def test_bad_arrays_give_a_reason():
  assert isinstance(faces.detect_and_align(np.zeros((64, 64), np.uint8)), NoFace)
  assert isinstance(faces.detect_and_align(np.zeros((64, 64, 3), np.float32)), NoFace)
  tiny = faces.detect_and_align(np.zeros((10, 64, 3), np.uint8))
  assert tiny.reason.startswith("image too small")


def test_weights_unpickler_refuses_code():
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo should-not-run",))

  with pytest.raises(pickle.UnpicklingError, match="refused"):
    faces._WeightsUnpickler(io.BytesIO(pickle.dumps([Evil()]))).load()


def test_missing_extra_names_the_install_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "mtcnn", None)  # import mtcnn -> ImportError
  with pytest.raises(ImportError, match=r'pip install -e "\.\[align\]"'):
    faces._require_extra()


# ----------------------------------------------------------------------------
# MTCNN on real photographs.

@pytest.fixture(scope="module")
def photos():
  pytest.importorskip("mtcnn")
  skdata = pytest.importorskip("skimage.data")
  from matplotlib import cbook
  with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
    grace = np.asarray(im.convert("RGB"))
  return {"astronaut": skdata.astronaut(), "grace_hopper": grace}


def _crop_landmarks(face):
  """Landmarks re-detected on the aligned crop: tests the warp for real."""
  found = faces.detect(face.crop)
  assert found, "no face re-detected on the aligned crop"
  return found[0].landmarks


@pytest.fixture(scope="module")
def aligned(photos):
  out = {}
  for name, image in photos.items():
    result = faces.detect_and_align(image, policy="all")
    assert not isinstance(result, NoFace), (name, result)
    out[name] = (result, _crop_landmarks(result[0]))
  return out


def test_weights_load_without_pickle_execution():
  pytest.importorskip("mtcnn")
  weights = faces._load_mtcnn_weights("pnet.lz4")
  assert [w.shape for w in weights[:2]] == [(3, 3, 3, 10), (10,)]
  assert all(w.dtype == np.float32 for w in weights)


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_one_face_and_eyes_on_the_template(aligned, name):
  result, crop_landmarks = aligned[name]
  assert len(result) == 1
  face = result[0]
  assert face.crop.shape == (S, S, 3) and face.crop.dtype == np.uint8
  assert face.score > 0.95 and face.outside == 0.0
  template = face_geometry.face_template("ffhq", S)
  eye_error = np.linalg.norm(crop_landmarks[:2] - template[:2], axis=1)
  assert eye_error.max() < 3.0, eye_error
  # The transform maps the source landmarks near the template too.
  moved = face_geometry.apply_transform(face.transform, face.landmarks)
  assert np.linalg.norm(moved[:2] - template[:2], axis=1).max() < 3.0


def _variants(image):
  pil = Image.fromarray(image)
  yield "flip", image[:, ::-1].copy()
  for angle in (20, -20):
    yield f"rotate{angle}", np.asarray(pil.rotate(angle, Image.Resampling.BICUBIC, expand=True))
  for s in (0.5, 1.5):
    size = (round(pil.width * s), round(pil.height * s))
    yield f"scale{s}", np.asarray(pil.resize(size, Image.Resampling.BICUBIC))


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_flipped_rotated_rescaled_copies_align_to_the_same_crop(photos, aligned, name):
  reference = aligned[name][1]
  errors = {}
  for variant, image in _variants(photos[name]):
    result = faces.detect_and_align(image)
    assert not isinstance(result, NoFace), (variant, result)
    lm = _crop_landmarks(result[0])
    if variant == "flip":  # mirror back: x -> S - 1 - x, left <-> right
      lm = np.stack([S - 1 - lm[:, 0], lm[:, 1]], 1)[[1, 0, 2, 4, 3]]
    errors[variant] = np.linalg.norm(lm - reference, axis=1).max()
  assert max(errors.values()) < 5.0, errors


def _landscape(size=256, seed=0):
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size] / size
  low = np.asarray(Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).resize(
      (size, size), Image.Resampling.BICUBIC)) / 255.0
  sky = y < 0.6 + 0.1 * np.sin(6 * x) + 0.15 * (low - 0.5)
  rgb = np.stack([np.where(sky, 0.5 + 0.3 * y, 0.25 + 0.2 * low),
                  np.where(sky, 0.7 + 0.2 * y, 0.45 + 0.25 * low),
                  np.where(sky, 0.95, 0.2 + 0.1 * low)], -1)
  return (rgb * 255).clip(0, 255).astype(np.uint8)


def test_images_without_faces(photos):
  rng = np.random.default_rng(0)
  for name, image in (
      ("noise", rng.normal(128, 40, (256, 256, 3)).clip(0, 255).astype(np.uint8)),
      ("flat", np.full((256, 256, 3), (90, 140, 200), np.uint8)),
      ("landscape", _landscape())):
    result = faces.detect_and_align(image)
    assert isinstance(result, NoFace), name
    assert result.reason.startswith(("no face found", "below threshold")), (name, result)


def _half(image):
  pil = Image.fromarray(image)
  return np.asarray(pil.resize((pil.width // 2, pil.height // 2), Image.Resampling.BICUBIC))


def test_policies_on_a_two_face_image(photos):
  a, g = _half(photos["astronaut"]), _half(photos["grace_hopper"])
  both = np.zeros((max(a.shape[0], g.shape[0]), a.shape[1] + g.shape[1], 3), np.uint8)
  both[:a.shape[0], :a.shape[1]], both[:g.shape[0], a.shape[1]:] = a, g
  assert faces.detect_and_align(both, policy="skip_multiple").reason.startswith("several faces")
  two = faces.detect_and_align(both, policy="all")
  assert len(two) == 2
  largest = faces.detect_and_align(both, policy="largest")
  assert len(largest) == 1 and largest[0].box[0] > a.shape[1]  # Grace's face is bigger


def test_below_threshold_reason(photos):
  strict = faces.DetectorSettings(thresholds=(0.6, 0.7, 0.99999))
  result = faces.detect_and_align(_half(photos["astronaut"]), strict)
  assert isinstance(result, NoFace) and result.reason.startswith("below threshold"), result


def test_large_min_face_size(photos):
  # mtcnn 1.0's own pyramid crashes here (a level smaller than PNet's window).
  found = faces.detect(photos["astronaut"], faces.DetectorSettings(min_face_size=40))
  assert len(found) == 1


def test_box_mode(photos, aligned):
  face = aligned["astronaut"][0][0]
  result = faces.detect_and_align(photos["astronaut"], mode="box", margin=32)
  assert len(result) == 1 and result[0].crop.shape == (S, S, 3)
  box = result[0].box
  np.testing.assert_allclose(box, face.box)
  # Boxes are edges (continuous); the box centre lands on the crop centre.
  centre = [(box[0] + box[2]) / 2 - 0.5, (box[1] + box[3]) / 2 - 0.5]  # as a pixel index
  np.testing.assert_allclose(face_geometry.apply_transform(result[0].transform, [centre])[0],
                             [S / 2 - 0.5, S / 2 - 0.5], atol=1e-6)


def test_crop_leaving_the_image(photos):
  cut = np.ascontiguousarray(photos["astronaut"][45:300, 100:400])  # hair cut at the top
  result = faces.detect_and_align(cut)
  assert isinstance(result, NoFace) and result.reason.startswith("crop leaves the image"), result
  kept = faces.detect_and_align(cut, max_outside=1.0, fill=(255, 0, 255))
  face = kept[0]
  assert 0.02 < face.outside < 0.3
  assert (face.crop[0] == [255, 0, 255]).all()  # top row comes from above the photo


def _tight(image, size, pad):
  """An LFW/CelebA-style crop: the face box plus `pad` of its side, resized."""
  d = faces.detect(image)[0]
  x1, y1, x2, y2 = d.box
  side = max(x2 - x1, y2 - y1) * (1 + 2 * pad)
  cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
  box = tuple(int(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
  return np.asarray(Image.fromarray(image).crop(box).resize((size, size), Image.Resampling.BICUBIC))


@pytest.mark.parametrize("size,pad", [(128, 0.0), (128, 0.25), (250, 0.1)])
def test_tight_face_crops_are_handled_not_refused(photos, size, pad):
  """The face fills the frame: the crop would leave the image by 30-60 %, so
  the largest square inside it is used (framing "tight"), no pixel invented."""
  for name, image in photos.items():
    crop = _tight(image, size, pad)
    matrix = face_geometry.alignment_matrix(faces.detect(crop)[0].landmarks, S)
    assert face_geometry.outside_fraction(matrix, crop.shape[:2], S) > 0.05  # refused before (> 2 %)
    (face,) = faces.detect_and_align(crop)
    assert face.framing == "tight" and face.outside == 0.0, (name, face.outside)
    assert face.source_side == pytest.approx(size)  # the whole frame, resized to S
    whole = np.asarray(Image.fromarray(crop).resize((S, S), Image.Resampling.BICUBIC))
    assert np.abs(face.crop.astype(int) - whole).mean() < 2.0
  # A generator-style output (FFHQ framing already) is simply aligned.
  ffhq = faces.detect_and_align(photos["astronaut"], output_size=256)[0].crop
  (face,) = faces.detect_and_align(ffhq)
  assert face.framing == "aligned" and face.outside <= 0.02


def test_too_small_faces_get_no_verdict(photos, tmp_path):
  """A face that would be enlarged more than 2x: `align` writes no crop and
  says why ("unsure: face too small (N px)"); judged against a smaller
  model input the same face is fine."""
  from cmfl_jax.data import aligned_crops as align_files
  small = np.asarray(Image.fromarray(photos["astronaut"]).resize((128, 128),
                                                                 Image.Resampling.BICUBIC))
  canvas = np.full((320, 320, 3), 120, np.uint8)
  canvas[100:228, 150:278] = small
  Image.fromarray(canvas).save(tmp_path / "small.png")
  (face,) = faces.detect_and_align(canvas)
  assert align_files.too_small(face, S, 2.0).startswith("face too small (26 px, 5.")
  assert align_files.too_small(face, 64, 2.0) is None
  record = align_files.align_one(str(tmp_path / "small.png"), str(tmp_path / "out" / "small"),
                                 align_files.AlignOptions())
  assert record["outputs"] == [] and record["reason"].startswith("unsure: face too small (26 px")
  record = align_files.align_one(str(tmp_path / "small.png"), str(tmp_path / "out" / "small"),
                                 align_files.AlignOptions(size=64))
  assert len(record["outputs"]) == 1 and record["framing"] == "aligned"
  # The photographs themselves keep their faces; in the two-face composite the
  # half-size astronaut (2.6x to 224 px) is the one set aside.
  a, g = _half(photos["astronaut"]), _half(photos["grace_hopper"])
  both = np.zeros((max(a.shape[0], g.shape[0]), a.shape[1] + g.shape[1], 3), np.uint8)
  both[:a.shape[0], :a.shape[1]], both[:g.shape[0], a.shape[1]:] = a, g
  Image.fromarray(both).save(tmp_path / "both.png")
  for name, image in photos.items():
    assert align_files.too_small(faces.detect_and_align(image)[0], S, 2.0) is None, name
  record = align_files.align_one(str(tmp_path / "both.png"), str(tmp_path / "out" / "both"),
                                 align_files.AlignOptions(policy="all"))
  assert len(record["outputs"]) == 1 and record["too_small"][0].startswith("face too small")


def test_detect_on_a_smaller_copy(photos, aligned):
  # detect_max_side: detect on a half-size copy, coordinates in the original.
  face = aligned["astronaut"][0][0]
  found = faces.detect(photos["astronaut"], faces.DetectorSettings(detect_max_side=256))
  assert len(found) == 1
  assert np.abs(found[0].landmarks - face.landmarks).max() < 3.0


# ----------------------------------------------------------------------------
# Whole folders / protocols (python -m cmfl_jax.align) and data.align.

@pytest.fixture(scope="module")
def photo_dir(photos, tmp_path_factory):
  """real/astronaut.png, fake/grace.jpg, fake/noise.png (no face), real/broken.jpg."""
  root = tmp_path_factory.mktemp("photos")
  for sub in ("real", "fake"):
    (root / sub).mkdir()
  Image.fromarray(photos["astronaut"]).save(root / "real" / "astronaut.png")
  Image.fromarray(photos["grace_hopper"]).save(root / "fake" / "grace.jpg", quality=92)
  noise = np.random.default_rng(0).integers(0, 255, (160, 200, 3), np.uint8)
  Image.fromarray(noise).save(root / "fake" / "noise.png")
  (root / "real" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
  return root


def test_align_folder_and_protocol_with_reasons_and_resume(photo_dir, tmp_path):
  import csv

  from cmfl_jax import align
  from cmfl_jax.data import aligned_crops as align_files
  proto = tmp_path / "train.csv"
  with open(proto, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["subject", "filename", "attack_type"])
    w.writerows([["a", "real/astronaut.png", ""], ["g", "fake/grace.jpg", "stylegan2"],
                 ["n", "fake/noise.png", "stylegan2"], ["b", "real/broken.jpg", ""]])
  out = tmp_path / "out"
  options = align_files.AlignOptions()
  result = align.run([str(proto)], str(out), options, data_root=str(photo_dir), workers=2,
                     progress=False)
  by_input = {os.path.basename(r["input"]): r for r in result["records"]}
  assert by_input["noise.png"]["reason"] == "no face found" and not by_input["noise.png"]["outputs"]
  assert "not an image" in by_input["broken.jpg"]["reason"]
  for name in ("astronaut.png", "grace.jpg"):
    record = by_input[name]
    assert record["faces_found"] == 1 and len(record["faces"][0]["landmarks"]) == 5
    (crop,) = record["outputs"]
    assert crop.startswith(str(out / "data")) and Image.open(crop).size == (224, 224)
  # The written protocol points at the crops and drops the images without a face.
  rows = list(csv.reader(open(result["protocols"][str(proto)])))
  assert rows[0] == ["subject", "filename", "attack_type"]
  assert rows[1:] == [["a", "real/astronaut.png", ""], ["g", "fake/grace.png", "stylegan2"]]
  # A rerun skips everything (the manifest has every input, outputs exist).
  stamp = os.stat(by_input["astronaut.png"]["outputs"][0]).st_mtime_ns
  lines = len(open(out / align_files.MANIFEST).read().splitlines())
  align.run([str(proto)], str(out), options, data_root=str(photo_dir), progress=False)
  assert len(open(out / align_files.MANIFEST).read().splitlines()) == lines == 4
  assert os.stat(by_input["astronaut.png"]["outputs"][0]).st_mtime_ns == stamp
  assert not list(out.rglob("*.tmp*"))


def test_data_align_turns_a_raw_folder_into_aligned_splits(photo_dir, tmp_path):
  import ml_collections

  from cmfl_jax.data import sources
  root = tmp_path / "folder"
  shutil.copytree(photo_dir, root / "eval")
  data = ml_collections.ConfigDict(dict(
      source="folder", data_root=str(root), train_split="", val_split="", eval_splits=("eval",),
      image_size=64, aligned=True, verify="decode", min_side=16, max_pixels=64_000_000,
      cache=False, align="align", align_policy="largest", align_size=224,
      align_dir=str(tmp_path / "cache")))
  splits, skipped = sources.load_splits(data, ["eval"])
  split = splits["eval"]
  assert len(split) == 2 and sorted(split.labels.tolist()) == [0, 1]
  assert all(p.startswith(str(tmp_path / "cache")) and Image.open(p).size == (224, 224)
             for p in split.paths)
  reasons = {os.path.basename(s["path"]): s["reason"] for s in skipped}
  assert reasons["noise.png"] == "no face: no face found" and "broken.jpg" in reasons
