"""`python -m cmfl_jax.export` (issue #31): the SavedModel and the jax.export
artifact give predict's scores in processes that cannot import JAX or
TensorFlow respectively, the card records what it must, `predict --model`
scores with the export, and bad input leaves nothing behind."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, main_env

N = 5
TOL = 1e-5
# Installed first in the loader subprocesses: importing a blocked package fails.
BLOCKER = textwrap.dedent("""
  import sys
  class Blocker:
    def find_spec(self, name, path=None, target=None):
      if name.split(".")[0] in BLOCKED:
        raise ImportError(f"{name} is blocked in this test")
  sys.meta_path.insert(0, Blocker())
""")
SAVED_MODEL_LOADER = """
import numpy as np, tensorflow as tf
images = np.load(sys.argv[1])
fn = tf.saved_model.load(sys.argv[2] + "/saved_model").signatures["serving_default"]
spec = fn.structured_input_signature[1]["images"]
assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, *images.shape[1:]], spec
ones = [{k: v.numpy() for k, v in fn(images=tf.constant(images[i:i + 1])).items()}
        for i in range(len(images))]
out = {f"one/{k}": np.concatenate([o[k] for o in ones]) for k in ones[0]}
out.update({f"all/{k}": v.numpy() for k, v in fn(images=tf.constant(images)).items()})
out["blocked"] = np.asarray([m in sys.modules for m in ("jax", "cmfl_jax")])
np.savez(sys.argv[3], **out)
"""
JAX_EXPORT_LOADER = """
import numpy as np, jax
from jax import export
images = np.load(sys.argv[1])
with open(sys.argv[2] + "/model.jax_exported", "rb") as f:
  exported = export.deserialize(bytearray(f.read()))
ones = [jax.device_get(exported.call(images[i:i + 1])) for i in range(len(images))]
out = {f"one/{k}": np.concatenate([o[k] for o in ones]) for k in ones[0]}
out.update({f"all/{k}": np.asarray(v) for k, v in jax.device_get(exported.call(images)).items()})
out["blocked"] = np.asarray([m in sys.modules for m in ("tensorflow", "cmfl_jax")])
np.savez(sys.argv[3], **out)
"""


def _export_cmd(workdir, output, *extra, cache_dir):
  return subprocess.run([sys.executable, "-m", "cmfl_jax.export", f"--workdir={workdir}",
                         f"--output={output}", *extra], cwd=ROOT, env=main_env(cache_dir),
                        capture_output=True, text=True, timeout=400)


# What `python -m cmfl_jax.calibrate` stores besides the threshold (hand-made here).
_CALIBRATION_FIELDS = {"false_alarm": 0.05, "kind": "marginal", "n": 40, "k": 2,
                       "guarantee": "hand-made for tests"}


@pytest.fixture(scope="module")
def run_copy(reference_run, tmp_path_factory):
  """A copy of the reference run (with a hand-made calibration file), so the
  shared workdir stays as it is."""
  workdir = str(tmp_path_factory.mktemp("export") / "run")
  shutil.copytree(reference_run[0], workdir)
  os.makedirs(os.path.join(workdir, "calibrations"), exist_ok=True)
  with open(os.path.join(workdir, "calibrations", "strict.json"), "w") as f:
    json.dump({**_CALIBRATION_FIELDS, "threshold": 0.625}, f)
  return workdir


@pytest.fixture(scope="module")
def exported(run_copy, cache_dir):
  output = os.path.join(os.path.dirname(run_copy), "out")
  proc = _export_cmd(run_copy, output, "--calibration=strict", cache_dir=cache_dir)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return output


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """N smooth-ish 32x32 PNGs: (paths, uint8 array read back with PIL)."""
  folder = tmp_path_factory.mktemp("export_images")
  rng = np.random.default_rng(7)
  paths = []
  for i in range(N):
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((32, 32), Image.BILINEAR)
    paths.append(str(folder / f"{i}.png"))
    image.save(paths[-1])
  return paths, np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


@pytest.fixture(scope="module")
def in_process(run_copy, images):
  """predict's scores and calibrated scores, and every head's P(real) from the
  eval step, all in this process from the checkpoint."""
  import jax
  from cmfl_jax.evaluation import evaluate
  from cmfl_jax.scoring import decisions, model as scoring_model
  from cmfl_jax.training import steps
  paths, pixels = images
  rows = list(decisions.predict(run_copy, paths).rows)
  config = scoring_model.config_from_checkpoint(run_copy, "best")
  state, eval_fn, mesh, meta, _ = evaluate.restore_for_eval(config, run_copy, "best")
  b = config.train.eval_batch_size
  batch = {"image": np.concatenate([pixels, np.zeros((b - N, 32, 32, 3), np.uint8)]),
           "label": np.zeros(b, np.int32), "mask": np.arange(b) < N}
  _, probs = eval_fn(state, jax.device_put(batch, steps.batch_sharding(mesh)))
  probs = {k: np.asarray(v)[:N] for k, v in jax.device_get(probs).items()}
  return {"p_real": np.asarray([r["score"] for r in rows]),
          "p_real_platt": np.asarray([r["platt"] for r in rows]),
          "p_real_rgb": probs["rgb"], "p_real_freq": probs["freq"], "joint": probs["joint"],
          "threshold_dev": np.full(N, meta["dev_threshold"]),
          "threshold_calibration": np.full(N, 0.625)}


def _load_elsewhere(loader, blocked, exported, pixels, tmp_path):
  np.save(tmp_path / "images.npy", pixels)
  script = f"BLOCKED = {blocked!r}\n{BLOCKER}\n{loader}"
  env = {k: v for k, v in main_env("").items() if k not in ("PYTHONPATH",
                                                            "JAX_COMPILATION_CACHE_DIR")}
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "images.npy"), exported,
                         str(tmp_path / "out.npz")], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return dict(np.load(tmp_path / "out.npz"))


@pytest.mark.parametrize("loader,blocked", [
    (SAVED_MODEL_LOADER, ("jax", "jaxlib", "flax", "cmfl_jax")),
    (JAX_EXPORT_LOADER, ("tensorflow", "tf_keras", "keras", "cmfl_jax")),
], ids=["saved_model_without_jax", "jax_export_without_tensorflow"])
def test_artifact_gives_predict_scores_at_batch_1_and_n(loader, blocked, exported, images,
                                                        in_process, tmp_path):
  out = _load_elsewhere(loader, blocked, exported, images[1], tmp_path)
  assert not out.pop("blocked").any()  # neither the other framework nor this project loaded
  names = {"p_real", "p_real_rgb", "p_real_freq", "p_real_platt", "threshold_dev",
           "threshold_calibration"}
  for batch in ("one", "all"):
    assert {k.split("/")[1] for k in out if k.startswith(batch)} == names
    for name in names:
      np.testing.assert_allclose(out[f"{batch}/{name}"], in_process[name], rtol=0, atol=TOL,
                                 err_msg=f"{batch}/{name}")
  assert np.ptp(in_process["p_real"]) > 1e-4  # the images give different scores


def test_card_records_checkpoint_contract_and_metrics(exported, run_copy):
  from cmfl_jax.training import checkpointing
  card = json.load(open(os.path.join(exported, "model_card.json")))
  kind, step = checkpointing.select_step(run_copy, "best")
  meta = checkpointing.read_meta(checkpointing.make_managers(run_copy)[kind], step)
  assert card["checkpoint"]["step"] == step and card["checkpoint"]["kind"] == kind
  assert card["checkpoint"]["fingerprint"] == meta["fingerprint"]
  assert card["input"]["shape"] == ["batch", 32, 32, 3] and card["input"]["dtype"] == "uint8"
  assert card["input"]["value_range"] == [0, 255] and card["input"]["aligned"] is True
  assert card["thresholds"] == {"dev": meta["dev_threshold"], "dev_stored": True,
                                "calibration": 0.625}
  assert card["platt_scaling"] == meta["calibration"] and "platt" not in card["calibration"]
  assert card["calibration"]["chosen"]["record"]["guarantee"] == "hand-made for tests"
  assert card["architecture"]["arch"] == "two_stream" and card["config"]["model"]["growth_rate"] == 4
  assert card["training_data"]["train_split"] == "train"
  d_eer = card["evaluation"]["splits"]["eval"]["metrics"]["d_eer"]
  assert d_eer["low"] <= d_eer["value"] <= d_eer["high"]
  assert card["artifacts"]["saved_model"]["inputs"]["images"] == ["uint8", [None, 32, 32, 3]]
  text = open(os.path.join(exported, "MODEL_CARD.md")).read()
  for heading in ("## Training data", "## Input contract", "## Evaluation", "## Known limits"):
    assert heading in text
  assert "attribution" not in card and "## Generator attribution" not in text  # no such head
  assert not any("generator" in k or "source" in k for k in card["outputs"])
  assert meta["fingerprint"] in text and "| eval | 16 |" in text


def test_predict_with_model_scores_as_the_checkpoint(exported, images, in_process):
  from cmfl_jax.scoring import decisions
  predictions = decisions.predict(None, images[0], model=exported)
  rows = list(predictions.rows)
  # The export carries the calibration chosen for it: its threshold decides.
  assert predictions.threshold == pytest.approx(in_process["threshold_calibration"][0])
  assert predictions.calibration == "strict"  # named by the export, not by a flag
  np.testing.assert_allclose([r["score"] for r in rows], in_process["p_real"], atol=TOL, rtol=0)
  # The carried calibration has no band and predict checks no stability
  # here: every image gets the threshold's verdict, none is unsure, and the
  # reason states the comparison that decided.
  for r in rows:
    real = r["score"] >= predictions.threshold
    assert (r["verdict"], r["reason"]) == (
        "real" if real else "synthetic",
        f"score {r['score']:.4f} {'>=' if real else '<'} threshold {predictions.threshold:.4f}"), r
  np.testing.assert_allclose([r["platt"] for r in rows], in_process["p_real_platt"],
                             atol=TOL, rtol=0)
  assert [r["path"] for r in rows] == images[0]


def test_predict_model_refuses_what_is_not_a_readable_export(exported, tmp_path):
  from cmfl_jax.exporting import ExportError, artifact
  bad = tmp_path / "bad"
  shutil.copytree(exported, bad)
  data = (bad / "model.jax_exported").read_bytes()
  (bad / "model.jax_exported").write_bytes(data[:len(data) // 2])
  with pytest.raises(ExportError, match="model.jax_exported cannot be read"):
    artifact.load(str(bad))
  with pytest.raises(ExportError, match="is not an exported model"):
    artifact.load(str(tmp_path / "elsewhere"))


def _leftovers(parent, name):
  return sorted(f for f in os.listdir(parent) if f.startswith(f".{name}."))


def test_existing_output_is_refused_with_one_line(exported, run_copy, cache_dir):
  before = sorted(os.listdir(exported))
  proc = _export_cmd(run_copy, exported, cache_dir=cache_dir)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "already exists" in last and "--overwrite" in last
  assert sorted(os.listdir(exported)) == before


def test_bad_input_is_refused_before_anything_is_written(run_copy, tmp_path):
  from cmfl_jax.exporting import ExportError, bundle
  out = str(tmp_path / "out")
  cases = {
      "unknown calibration": (dict(workdir=run_copy, calibration="lenient"),
                              "unknown calibration 'lenient'", "available: ", "strict"),
      "missing checkpoint": (dict(workdir=run_copy, which="999"), "no checkpoint '999'",
                             "it holds best"),
      "no run at all": (dict(workdir=str(tmp_path / "nothing")), "no checkpoint 'best'",
                        "no checkpoints"),
  }
  for case, (kwargs, *expected) in cases.items():
    with pytest.raises(ExportError) as error:
      bundle.export_model(output=out, **kwargs)
    message = str(error.value)
    assert "\n" not in message and all(e in message for e in expected), (case, message)
    assert not os.path.exists(out) and not _leftovers(tmp_path, "out"), case
  broken = os.path.join(run_copy, "calibrations", "broken.json")
  with open(broken, "w") as f:
    json.dump({**_CALIBRATION_FIELDS, "threshold": "high"}, f)
  try:
    with pytest.raises(ExportError, match="no valid 'threshold'"):
      bundle.export_model(run_copy, out, calibration="broken")
  finally:
    os.remove(broken)
  assert not os.path.exists(out)


def test_damaged_checkpoint_is_refused(run_copy, tmp_path):
  from cmfl_jax.exporting import ExportError, bundle
  workdir = str(tmp_path / "run")
  shutil.copytree(run_copy, workdir)
  step_dir = os.path.join(workdir, "checkpoints", "best")
  step_dir = os.path.join(step_dir, os.listdir(step_dir)[0])
  data = max((os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state"))
              for f in fs), key=os.path.getsize)
  with open(data, "r+b") as f:
    f.seek(os.path.getsize(data) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(ExportError, match="damaged"):
    bundle.export_model(workdir, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out") and not _leftovers(tmp_path, "out")


def test_write_failure_leaves_previous_output_and_no_partial_one(exported, run_copy, tmp_path,
                                                                 monkeypatch):
  """A disk-full error after both artifacts are written (while writing the
  card), with --overwrite: the earlier export stays as it was."""
  from cmfl_jax.exporting import ExportError, bundle, card
  out = tmp_path / "out"
  shutil.copytree(exported, out)
  before = {f: os.path.getsize(out / f) for f in ("model_card.json", "model.jax_exported")}

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(card, "write", full_disk)
  with pytest.raises(ExportError, match="writing the export failed: No space left on device"):
    bundle.export_model(run_copy, str(out), overwrite=True)
  assert {f: os.path.getsize(out / f) for f in before} == before
  assert not _leftovers(tmp_path, "out")


def test_staged_directory_replaces_only_when_complete(tmp_path):
  from cmfl_jax.exporting import ExportError, staging
  out = tmp_path / "out"
  out.mkdir()
  (out / "old").write_text("old")
  with pytest.raises(ExportError, match="already exists"):
    with staging.staged_directory(str(out), overwrite=False):
      pass
  with pytest.raises(RuntimeError):
    with staging.staged_directory(str(out), overwrite=True) as d:
      open(os.path.join(d, "new"), "w").close()
      raise RuntimeError("interrupted")
  assert sorted(os.listdir(out)) == ["old"] and not _leftovers(tmp_path, "out")
  with staging.staged_directory(str(out), overwrite=True) as d:
    open(os.path.join(d, "new"), "w").close()
  assert sorted(os.listdir(out)) == ["new"] and not _leftovers(tmp_path, "out")
  assert oct(os.stat(out).st_mode & 0o777) != oct(0o700)


def test_outputs_follow_the_architecture_and_the_stored_numbers():
  from cmfl_jax import models
  from cmfl_jax.exporting import ExportError, serving_fn
  bare = serving_fn.Constants.of({}, None)  # no dev threshold, no Platt fit: 0.5, identity
  assert (bare.dev_threshold, bare.platt["a"], bare.platt["b"]) == (0.5, 1.0, 0.0)
  assert serving_fn.output_names(models.ModelConfig(arch="one_stream"), bare) == [
      "p_real", "p_real_platt", "threshold_dev"]
  full = serving_fn.Constants.of(
      {"dev_threshold": 0.3, "calibration": {"method": "platt", "a": 2.0, "b": -1.0}},
      {"threshold": 0.7})
  assert (full.dev_threshold, full.calibration_threshold, full.platt["a"]) == (0.3, 0.7, 2.0)
  assert serving_fn.output_names(models.ModelConfig(arch="two_stream"), full) == [
      "p_real", "p_real_rgb", "p_real_freq", "p_real_platt", "threshold_dev",
      "threshold_calibration"]
  with pytest.raises(ExportError, match="not an increasing Platt map"):
    serving_fn.Constants.of({"calibration": {"method": "platt", "a": -1.0, "b": 0.0}}, None)


# ---------------------------------------------------------------------------
# The attribution head (issue #33): which generator, decided inside the artifact.

def test_artifacts_decide_the_generator_as_the_checkpoint(attribution_export,
                                                          attribution_reference):
  """Both artifacts, read back: `source_probs` is the softmax of the
  checkpoint's own logits (evaluation path), `generator_index` is
  `openset.decide` with the stored threshold (-1 = unknown), computed inside
  the compiled function, and `generator_confidence` its confidence; int32 /
  float32 with the batch dimension."""
  import jax
  import tensorflow as tf
  from scipy import special
  from cmfl_jax.attribution import openset
  from cmfl_jax.exporting import jax_export, savedmodel
  ref = attribution_reference
  logits, fitted = ref["logits"], ref["fitted"]
  index, confidence = openset.decide(logits, fitted)
  near = np.abs(openset.energy(logits) - fitted["threshold"]) < 1e-4  # float32 rounding
  assert not near.all()
  exported = jax_export.read(os.path.join(attribution_export, jax_export.FILENAME))
  signature = tf.saved_model.load(os.path.join(attribution_export, savedmodel.DIRNAME)
                                  ).signatures[savedmodel.SIGNATURE]
  got = {"jax_exported": {k: np.asarray(v)
                          for k, v in jax.device_get(exported.call(ref["pixels"])).items()},
         "saved_model": {k: v.numpy() for k, v in
                         signature(**{savedmodel.INPUT: tf.constant(ref["pixels"])}).items()}}
  n, k = logits.shape
  for name, out in got.items():
    assert out["generator_index"].dtype == np.int32 and out["generator_index"].shape == (n,)
    assert out["source_probs"].dtype == np.float32 and out["source_probs"].shape == (n, k)
    assert out["generator_confidence"].dtype == np.float32, name
    np.testing.assert_array_equal(out["generator_index"][~near], index[~near], err_msg=name)
    np.testing.assert_allclose(out["source_probs"], special.softmax(logits, axis=-1), atol=TOL,
                               rtol=0, err_msg=name)
    np.testing.assert_allclose(out["generator_confidence"], confidence, atol=TOL, rtol=0)
    np.testing.assert_allclose(out["p_real"], ref["joint"], atol=TOL, rtol=0)
  np.testing.assert_array_equal(got["jax_exported"]["generator_index"],
                                got["saved_model"]["generator_index"])


def test_predict_with_model_names_the_generator(attribution_export, attribution_reference):
  """`predict --model` rows carry the artifact's decision, named with the card's classes."""
  from cmfl_jax.attribution import openset
  from cmfl_jax.scoring import decisions
  ref = attribution_reference
  predictions = decisions.predict(None, ref["paths"], model=attribution_export, stability=())
  rows = list(predictions.rows)
  assert predictions.classes == tuple(ref["fitted"]["classes"])
  index, confidence = openset.decide(ref["logits"], ref["fitted"])
  clear = np.abs(openset.energy(ref["logits"]) - ref["fitted"]["threshold"]) >= 1e-4
  want = openset.names(index, ref["fitted"]["classes"])
  assert [r["generator"] for r, c in zip(rows, clear) if c] == [w for w, c in zip(want, clear)
                                                                if c]
  np.testing.assert_allclose([r["generator_confidence"] for r in rows], confidence, atol=TOL)


def test_card_lists_the_classes_rule_and_threshold(attribution_export, attribution_reference):
  from cmfl_jax.exporting import serving_fn
  fitted = attribution_reference["fitted"]
  card = json.load(open(os.path.join(attribution_export, "model_card.json")))
  entry = card["attribution"]
  assert (entry["classes"], entry["rule"], entry["threshold"]) == (
      fitted["classes"], "energy", fitted["threshold"])
  assert entry["known_acceptance"] == fitted["known_acceptance"] == 0.95
  assert entry["evaluation"]["closed_set_accuracy"]["low"] <= entry["evaluation"][
      "closed_set_accuracy"]["value"]
  assert list(card["outputs"])[-3:] == ["source_probs", "generator_index", "generator_confidence"]
  assert all(card["outputs"][k] == serving_fn.OUTPUTS[k] for k in card["outputs"])
  outputs = card["artifacts"]["saved_model"]["outputs"]
  assert outputs["generator_index"] == ["int32", [None]]
  assert outputs["source_probs"] == ["float32", [None, len(fitted["classes"])]]
  text = open(os.path.join(attribution_export, "MODEL_CARD.md")).read()
  assert "## Generator attribution" in text and "0: bona_fide, 1: stripes, 2: upsample2" in text
  assert f"threshold {fitted['threshold']:.4f}" in text and "`generator_index`" in text


def test_jax_rules_decide_as_the_numpy_ones():
  """`openset.decide_jax` (what the export compiles, float32) against
  `openset.decide` (float64) on random logits for both rules, at thresholds
  that leave some images unknown; images within rounding of the cut are left
  out."""
  import jax
  from cmfl_jax.attribution import openset
  assert set(openset.JAX_RULES) == set(openset.RULES)
  logits = np.random.default_rng(3).normal(0, 3, (400, 5)).astype(np.float32)
  for rule, score in openset.RULES.items():
    scores = score(logits)
    for quantile in (0.0, 0.3, 0.7):
      fitted = {"rule": rule, "threshold": float(np.quantile(scores, quantile))}
      index, confidence = openset.decide(logits, fitted)
      got = jax.jit(lambda x, fitted=fitted: openset.decide_jax(x, fitted))(logits)
      clear = np.abs(scores - fitted["threshold"]) > 1e-5
      np.testing.assert_array_equal(np.asarray(got[0])[clear], index[clear])
      np.testing.assert_allclose(got[1], confidence, atol=1e-6)
      np.testing.assert_allclose(np.asarray(got[2]).max(axis=-1), confidence, atol=1e-6)
      assert (quantile == 0.0) == (index != -1).all() and (index[clear] >= 0).any()


def test_self_check_compares_integer_outputs_and_dtypes_exactly():
  from cmfl_jax.exporting import ExportError, bundle
  want = {"generator_index": np.asarray([0, -1], np.int32),
          "p_real": np.asarray([0.5, 0.25], np.float32)}
  assert bundle._max_difference(dict(want), want) == 0.0
  off = {**want, "generator_index": np.asarray([0, 1], np.int32)}
  assert bundle._max_difference(off, want) == 2.0 > bundle.SELF_CHECK_TOLERANCE
  with pytest.raises(ExportError, match="generator_index is float32"):
    bundle._max_difference({**want, "generator_index": want["generator_index"].astype(
        np.float32)}, want)


def test_attribution_constants_need_the_dev_fit():
  from cmfl_jax import models
  from cmfl_jax.exporting import ExportError, serving_fn
  fitted = {"classes": ["bona_fide", "gan"], "rule": "energy", "threshold": 1.0}
  assert serving_fn.Constants.of({"attribution": fitted}, None).attribution is None  # no head
  with_head = serving_fn.Constants.of({"attribution": fitted}, None, num_sources=2)
  assert serving_fn.output_names(models.ModelConfig(arch="two_stream"), with_head)[-3:] == [
      "source_probs", "generator_index", "generator_confidence"]
  with pytest.raises(ExportError, match="no open-set threshold"):
    serving_fn.Constants.of({}, None, num_sources=2)
  with pytest.raises(ExportError, match="does not match its 3-class head"):
    serving_fn.Constants.of({"attribution": fitted}, None, num_sources=3)


def test_self_check_probes_differ_in_kind():
  """The export's read-back check runs on 8 unlike images (noise, smooth
  noise, flat, gradient, checkerboard), not 2 noise images whose scores and
  generator decisions would all be alike."""
  from cmfl_jax.exporting import serving_fn
  probes = serving_fn.probe_images(32)
  assert probes.shape == (8, 32, 32, 3) and probes.dtype == np.uint8
  spread = [float(p.std()) for p in probes]
  assert len({p.tobytes() for p in probes}) == 8
  assert min(spread) == 0.0 and max(spread) > 100 and len({round(s) for s in spread}) >= 6
