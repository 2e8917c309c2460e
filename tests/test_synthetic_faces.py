"""The embedded benchmark: determinism, balance, no brightness shortcut, the
intended trace of each family, TFDS splits, export round trip, Durall baseline."""

import numpy as np
import pytest

from cmfl_jax.data import readers
from cmfl_jax.data.synthetic import builder as sf_builder
from cmfl_jax.data.synthetic import simulate as sf


def _imgs(source, n=32, size=64, split="train"):
  return np.stack(list(sf.sample(source, split, n, size))).astype(np.float64)


@pytest.fixture(scope="module")
def samples():
  return {s: _imgs(s) for s in sf.REAL_SOURCES + sf.FAMILIES}


def test_deterministic_and_splits_disjoint():
  a = np.stack(list(sf.sample("progan", "train", 4, 32)))
  b = np.stack(list(sf.sample("progan", "train", 4, 32)))
  c = np.stack(list(sf.sample("progan", "dev", 4, 32)))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.dtype == np.uint8 and a.shape == (4, 32, 32, 3)


def test_no_brightness_or_colour_shortcut():
  # Same content through every camera and generator: per-image channel means
  # and contrasts stay those of the content (sources share the content sampler).
  rng = np.random.default_rng(0)
  content = np.stack([sf.render_face(rng, 64) for _ in range(16)])
  outs = {c: sf.camera_capture(content, cam, rng) for c, cam in sf.CAMERAS.items()}
  outs.update({f: sf.generate(f, content, rng) for f in sf.FAMILIES})
  ref_mean = content.mean(axis=(1, 2))
  ref_std = content.std(axis=(1, 2))
  for src, x in outs.items():
    assert np.abs(x.mean(axis=(1, 2)) - ref_mean).max() * 255 < 4, src
    assert np.abs(x.std(axis=(1, 2)) - ref_std).max() * 255 < 8, src


def _power(x):
  g = x.mean(-1)
  return np.mean(np.abs(np.fft.fft2(g - g.mean(axis=(1, 2), keepdims=True))) ** 2, axis=0)


def _band(p, lo, hi):
  """Mean power at radial frequencies in [lo, hi) cycles/pixel (images share
  their content's variance, so absolute band powers compare)."""
  n = p.shape[0]
  f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
  return p[(f >= lo) & (f < hi)].mean()


def _high_band(p):
  return _band(p, 0.3, 1.0)


def test_family_traces(samples):
  p = {s: _power(x) for s, x in samples.items()}
  n = 64
  nyq = n // 2
  # dcgan: checkerboard -> energy at (Nyquist, Nyquist) far above bona fide.
  assert p["dcgan"][nyq, nyq] > 10 * p["real"][nyq, nyq]
  # stylegan3 and diffusion: band-limited / denoised -> thin high frequencies.
  for fam in ("stylegan3", "diffusion"):
    assert _high_band(p[fam]) < 0.5 * _high_band(p["real"]), fam
  assert _band(p["diffusion"], 0.1, 0.2) < 0.3 * _band(p["real"], 0.1, 0.2)
  # progan: nearest-neighbour upsampling -> pixel pairs (2i, 2i+1) more alike
  # than (2i+1, 2i+2); bona fide has no such phase.
  def phase_ratio(x):
    within = np.abs(x[:, :, 0::2] - x[:, :, 1::2]).mean()
    across = np.abs(x[:, :, 1:-1:2] - x[:, :, 2::2]).mean()
    return within / across
  assert phase_ratio(samples["progan"]) < 0.8
  assert 0.9 < phase_ratio(samples["real"]) < 1.1
  # swagan: inverse Haar detail bands -> energy at (Nyquist, Nyquist).
  assert p["swagan"][nyq, nyq] > 10 * p["real"][nyq, nyq]
  # stylegan2: injected white noise keeps high frequencies, unlike stylegan3.
  assert _high_band(p["stylegan2"]) > 2 * _high_band(p["stylegan3"])
  # The two cameras differ (different demosaicing/noise): real2 replicates pixels.
  assert phase_ratio(samples["real2"]) < 0.8


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
  return sf_builder.prepare("tiny", str(tmp_path_factory.mktemp("tfds")))


def test_tfds_splits_and_balance(tiny_builder):
  builder = tiny_builder
  splits = builder.info.splits
  assert len(splits) == 2 * 3 + 6 * 3 - 2  # real2 only has eval
  for fam in sf.FAMILIES + ("real",):
    assert splits[f"{fam}_train"].num_examples == 16
    assert splits[f"{fam}_eval"].num_examples == 8
  from cmfl_jax.data import tfds_faces
  split = tfds_faces.split_from_builder(builder, "real_train+dcgan_train")
  assert len(split) == 32 and split.labels.sum() == 16
  assert set(split.generators) == {"real", "dcgan"}
  by_name = {_text(split.storage.source[i]["filename"]): i for i in range(len(split))}
  first = split.storage.source[by_name["real/train/000000.png"]]["image"]
  np.testing.assert_array_equal(first, next(sf.sample("real", "train", 1, 32)))


def _text(v):
  return v.decode() if isinstance(v, bytes) else v


def test_export_round_trips_through_protocol_reader(tiny_builder, tmp_path):
  from cmfl_jax.data import tfds_faces
  from cmfl_jax.tools import export_benchmark
  builder = tiny_builder
  counts = export_benchmark.export(builder, str(tmp_path))
  assert counts["stylegan3_dev"] == 8
  proto = tmp_path / "protocols" / "stylegan3"
  split = readers.read_protocol_csv(str(proto / "train.csv"), str(tmp_path / "data"))
  assert len(split) == 32 and set(split.generators) == {"real", "stylegan3"}
  ref = tfds_faces.split_from_builder(builder, "real_train+stylegan3_train")
  from PIL import Image
  for i in (0, 31):
    np.testing.assert_array_equal(np.asarray(Image.open(split.paths[i])), ref.storage.source[i]["image"])
  assert (proto / "eval_real2.csv").exists()


def test_durall_baseline(tiny_builder):
  from cmfl_jax.tools import durall
  feats = durall.azimuthal_features(_imgs("real", 4, 32))
  assert feats.shape == (4, 16) and feats.min() == 0 and feats.max() == 1
  builder = tiny_builder
  eers = durall.cross_model_eers(builder, "dcgan")
  assert set(eers) == {f"real_eval+{f}_eval" for f in sf.FAMILIES} | {"real2_eval+dcgan_eval"}
  assert all(0 <= v <= 1 for v in eers.values())
  # The checkerboard family is separable from its own spectrum profile.
  assert eers["real_eval+dcgan_eval"] <= 0.25


def test_logistic_regression_learns_a_separable_problem():
  from cmfl_jax.tools import durall
  rng = np.random.default_rng(0)
  x = rng.normal(0, 1, (200, 3))
  y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(float)
  p = durall.LogisticRegression(l2=1e-4).fit(x, y).predict_proba(x)
  assert np.mean((p > 0.5) == y) > 0.97


def test_custom_resolution_and_split_sizes(tmp_path):
  builder = sf_builder.prepare("s16_t4_d2_e2", str(tmp_path))
  assert builder.info.splits["progan_train"].num_examples == 4
  assert builder.info.splits["real2_eval"].num_examples == 2
  assert builder.as_data_source(split="real_dev")[0]["image"].shape == (16, 16, 3)
  with pytest.raises(ValueError, match="unknown cmfl_synth_faces config"):
    sf_builder.make_builder("huge")


# ---- difficulty statistics (issue #20) --------------------------------------------
def test_difficulty_statistics_measure_what_they_claim():
  from scipy.ndimage import gaussian_filter

  from cmfl_jax.tools import difficulty
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (60, 48, 48, 3)).astype(np.uint8)
  smooth = np.stack([gaussian_filter(x.astype(float), (2, 2, 0)) for x in noise])
  smooth = np.clip(np.round(smooth), 0, 255).astype(np.uint8)
  # Sharpness: blur lowers both statistics; as detectors they separate fully.
  assert np.all(difficulty.laplacian_variance(smooth) < difficulty.laplacian_variance(noise))
  hf_noise = difficulty.high_frequency_fraction(noise)
  # White noise: the share of FFT bins beyond 0.25 cycles/pixel (~80 %).
  r = np.hypot(*np.meshgrid(np.fft.fftfreq(48), np.fft.fftfreq(48)))
  assert abs(hf_noise.mean() - np.mean(r > 0.25)) < 0.03
  assert difficulty.high_frequency_fraction(smooth).max() < 0.05
  assert difficulty.separability(difficulty.laplacian_variance(noise),
                                 difficulty.laplacian_variance(smooth)) == 1.0
  # Two samples of one distribution: near 0.5 either way.
  other = rng.integers(0, 256, (60, 48, 48, 3)).astype(np.uint8)
  assert difficulty.separability(difficulty.laplacian_variance(noise),
                                 difficulty.laplacian_variance(other)) < 0.65
  freqs, white = difficulty.radial_spectrum(noise)
  assert freqs[0] > 0 and freqs[-1] < 0.5 and np.ptp(white[2:]) < 0.15  # flat (log10)
  result = difficulty.measure({"real": noise, "blurred": smooth, "same": other})
  assert result["classes"]["same"]["max_spectrum_gap_db_to_half_nyquist"] < 1.0
  assert result["classes"]["blurred"]["spectrum_gap_db_at_nyquist"] < -20
  assert result["classes"]["blurred"]["auc_high_frequency_fraction"] == 1.0


def test_difficulty_run_writes_json_and_picture(tmp_path):
  import json

  from cmfl_jax.tools import difficulty
  difficulty.run(32, 6, "eval", 0, str(tmp_path))
  result = json.loads((tmp_path / "difficulty.json").read_text())
  assert set(result["classes"]) == {"real2", *sf.FAMILIES}
  assert (tmp_path / "difficulty.png").stat().st_size > 10_000
