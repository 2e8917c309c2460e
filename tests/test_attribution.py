"""Attribution: which generator made an image, and "unknown" for the ones
never seen in training (cmfl_jax/attribution, issue #33)."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image
from scipy import special

from helpers import ATTRIBUTION_FLAGS, ROOT, run_main
from cmfl_jax import models
from cmfl_jax.attribution import classes, evaluation, openset
from cmfl_jax.data import readers
from cmfl_jax.data.split import Pixels, Split
from cmfl_jax.training import losses


def _split(gens, name="train"):
  gens = np.asarray(gens)
  labels = np.asarray([1 if g.startswith("real") else 0 for g in gens], np.int32)
  return Split(name, labels, gens, Pixels(np.zeros((len(gens), 4, 4, 3), np.uint8)))


def _config(**attribution):
  config = ml_collections.ConfigDict({"attribution": {
      "enabled": True, "classes": (), "min_train_images": 2, "known_acceptance": 0.95}})
  config.attribution.update(attribution)
  return config


# ---------------------------------------------------------------- classes
def test_classes_are_bona_fide_then_the_training_generators_sorted():
  split = _split(["real"] * 3 + ["stylegan2"] * 2 + ["diffusion"] * 2 + ["progan"] * 2)
  resolved = classes.resolve(_config(), split)
  assert tuple(resolved.attribution.classes) == ("bona_fide", "diffusion", "progan", "stylegan2")
  ids = classes.source_ids(_split(["real", "real2", "progan", "dcgan", "stylegan2"]),
                           resolved.attribution.classes)
  # Every bona fide camera is class 0; a generator the head does not know is UNSEEN.
  assert ids.tolist() == [0, 0, 2, classes.UNSEEN, 3]


def test_a_generator_with_too_few_training_images_is_a_config_error():
  split = _split(["real"] * 5 + ["progan"] * 5 + ["dcgan"] * 2)
  with pytest.raises(ValueError, match=r"too few training images.*'dcgan': 2.*min_train_images=3"):
    classes.resolve(_config(min_train_images=3), split)


def test_configured_classes_must_match_the_training_generators():
  split = _split(["real"] * 3 + ["progan"] * 3 + ["dcgan"] * 3)
  with pytest.raises(ValueError, match=r"not listed: \['dcgan'\]"):
    classes.resolve(_config(classes=("bona_fide", "progan")), split)
  with pytest.raises(ValueError, match=r"no training images of \['swagan'\]"):
    classes.resolve(_config(classes=("bona_fide", "dcgan", "progan", "swagan")), split)
  kept = classes.resolve(_config(classes=("bona_fide", "progan", "dcgan")), split)
  assert tuple(kept.attribution.classes) == ("bona_fide", "progan", "dcgan")  # order kept


def test_off_the_config_is_returned_untouched():
  config = _config(enabled=False)
  assert classes.resolve(config, _split(["real", "progan"])) is config
  assert classes.num_sources(config) == 0


def test_protocol_csv_attack_types_are_the_generators(tmp_path):
  root = tmp_path / "data"
  root.mkdir()
  rows = ["subject,filename,attack_type"]
  for i, attack in enumerate(["", "", "stylegan2", "stylegan2", "sd15", "sd15"]):
    Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(root / f"{i}.png")
    rows.append(f"s{i},{i}.png,{attack}")
  (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
  split = readers.read_protocol_csv(str(tmp_path / "train.csv"), str(root), "train")
  resolved = classes.resolve(_config(), split)
  assert tuple(resolved.attribution.classes) == ("bona_fide", "sd15", "stylegan2")
  assert classes.source_ids(split, resolved.attribution.classes).tolist() == [0, 0, 2, 2, 1, 1]


def test_class_balance_weights_make_every_class_weigh_the_same_in_an_epoch():
  from cmfl_jax.data import pipeline
  split = _split(["real"] * 30 + ["progan"] * 20 + ["dcgan"] * 40)
  ids = classes.source_ids(split, ("bona_fide", "dcgan", "progan"))
  order = pipeline.balanced_order(split.labels, 0, 0, "oversample")  # bona fide x2 to 60
  weights = classes.balance_weights(ids, order, 3)
  per_class = np.bincount(ids[order], weights=weights[order], minlength=3)
  np.testing.assert_allclose(per_class, per_class.mean(), rtol=1e-6)
  assert weights[order].mean() == pytest.approx(1.0)
  assert weights[ids == 2][0] > weights[ids == 1][0] > weights[ids == 0][0]


# ---------------------------------------------------------------- model and loss
def _tiny_model(num_sources, seed=0):
  config = models.ModelConfig.from_config(
      {"backbone": "densenet121", "growth_rate": 4, "block_config": (1, 1),
       "num_init_features": 8, "bn_size": 2}, "cpu", num_sources)
  return models.create_model(config, rngs=nnx.Rngs(seed))


def test_without_the_head_the_model_is_as_before_and_with_it_only_the_head_is_added():
  off, on = _tiny_model(0), _tiny_model(4)
  leaves = lambda m: {jax.tree_util.keystr(k): v for k, v in  # noqa: E731
                      jax.tree_util.tree_flatten_with_path(nnx.state(m))[0]}
  off_leaves, on_leaves = leaves(off), leaves(on)
  added = set(on_leaves) - set(off_leaves)
  assert added and all("source_head" in k for k in added)
  assert set(off_leaves) <= set(on_leaves)
  for k, v in off_leaves.items():  # the same seed draws the same detector weights
    np.testing.assert_array_equal(v, on_leaves[k])
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)), jnp.uint8)
  off.eval(), on.eval()
  out_off, out_on = off(images), on(images)
  assert sorted(out_off) == ["freq", "joint", "rgb"]
  assert out_on[models.SOURCE].shape == (3, 4)
  for head in out_off:
    np.testing.assert_allclose(out_off[head], out_on[head], rtol=1e-6)
  with pytest.raises(ValueError, match="two_stream"):
    models.ModelConfig.from_config({"arch": "one_stream"}, "cpu", 3)


def test_the_attribution_term_is_weighted_cross_entropy_and_skips_unseen_rows():
  rng = np.random.default_rng(1)
  outputs = {h: jnp.asarray(rng.normal(size=5), jnp.float32) for h in ("joint", "rgb", "freq")}
  logits = rng.normal(size=(5, 3)).astype(np.float32)
  labels = jnp.asarray([1, 0, 0, 1, 0], jnp.float32)
  src = np.asarray([0, 2, 1, 0, -1])
  plain = losses.objective_per_example("cmfl", outputs, labels)
  terms = losses.objective_per_example("cmfl", {**outputs, models.SOURCE: jnp.asarray(logits)},
                                       labels, sources=jnp.asarray(src), attribution_weight=0.3)
  expected = -np.log(special.softmax(logits, axis=1)[np.arange(5), np.maximum(src, 0)])
  expected[src < 0] = 0.0
  np.testing.assert_allclose(terms["attribution_ce"], expected, rtol=1e-5)
  np.testing.assert_allclose(terms["loss"], plain["loss"] + 0.3 * expected, rtol=1e-5)
  assert "bce_source" not in terms  # the source logits are not a P(real) head
  weights = jnp.asarray([1.0, 2.0, 0.5, 1.0, 3.0])
  weighted = losses.objective_per_example(
      "cmfl", {**outputs, models.SOURCE: jnp.asarray(logits)}, labels,
      sources=jnp.asarray(src), source_weights=weights, attribution_weight=0.3)
  np.testing.assert_allclose(weighted["attribution_ce"], expected * np.asarray(weights), rtol=1e-5)
  np.testing.assert_allclose(terms["detection_loss"], plain["loss"], rtol=1e-6)
  assert sorted(plain) == sorted(set(terms) - {"attribution_ce", "detection_loss"})
  np.testing.assert_allclose(
      losses.source_cross_entropy(jnp.asarray(logits), jnp.asarray(np.maximum(src, 0))),
      optax.softmax_cross_entropy_with_integer_labels(logits, np.maximum(src, 0)), rtol=1e-6)


# ---------------------------------------------------------------- open set
def test_energy_and_max_softmax_are_the_published_scores():
  logits = np.asarray([[2.0, 0.0, -1.0], [10.0, 10.0, 10.0]])
  np.testing.assert_allclose(openset.energy(logits),
                             np.log(np.exp(logits).sum(axis=1)), rtol=1e-12)
  np.testing.assert_allclose(openset.max_softmax(logits),
                             [np.exp(2) / (np.exp(2) + 1 + np.exp(-1)), 1 / 3], rtol=1e-12)


def test_the_dev_threshold_accepts_the_asked_share_of_known_images():
  """The fitted threshold accepts >= 95 % of the dev known images, and on
  fresh images of the same distribution ~95 % on average (simulation)."""
  rng = np.random.default_rng(0)
  accepted = []
  for _ in range(200):
    dev = rng.normal(size=(300, 4)) + 3 * np.eye(4)[rng.integers(0, 4, 300)]
    fitted = openset.fit(dev, np.zeros(300, int), ["a", "b", "c", "d"], 0.95)
    assert np.mean(openset.energy(dev) >= fitted["threshold"]) >= 0.95
    fresh = rng.normal(size=(300, 4)) + 3 * np.eye(4)[rng.integers(0, 4, 300)]
    accepted.append(np.mean(openset.decide(fresh, fitted)[0] != classes.UNSEEN))
  # Mean over 200 runs: standard error ~0.1 %; the quantile rule's bias is ~1/300.
  assert abs(np.mean(accepted) - 0.95) < 0.01


def test_decide_names_the_argmax_or_unknown_below_the_threshold():
  logits = np.asarray([[5.0, 0.0, 0.0], [0.0, 0.0, 0.1], [0.0, 4.0, 0.0]])
  fitted = {"rule": "energy", "threshold": 2.0}
  decisions, confidence = openset.decide(logits, fitted)
  assert decisions.tolist() == [0, classes.UNSEEN, 1]
  np.testing.assert_allclose(confidence, special.softmax(logits, axis=1).max(axis=1))
  assert openset.names(decisions, ["bona_fide", "progan", "dcgan"]) == [
      "bona_fide", "unknown", "progan"]
  with pytest.raises(ValueError, match="open-set rule"):
    openset.fit(logits, np.zeros(3, int), ["a", "b", "c"], 0.9, rule="mahalanobis")


# ---------------------------------------------------------------- evaluation
def _sources(rng, spec):
  """name -> (class, label, n, centre): logits around a class centre."""
  out = {}
  for name, (cls, label, n, centre) in spec.items():
    out[name] = {"logits": rng.normal(size=(n, 3)) + centre, "label": label, "class": cls}
  return out


def test_evaluation_numbers_against_a_direct_computation():
  rng = np.random.default_rng(3)
  srcs = _sources(rng, {
      "real": (0, 1, 60, [4, 0, 0]), "progan": (1, 0, 40, [0, 4, 0]),
      "dcgan": (2, 0, 20, [0, 0, 1]),           # a weak class: some confusion
      "swagan": (classes.UNSEEN, 0, 30, [0, 0, 0]),      # far from every class: rejected
      "diffusion": (classes.UNSEEN, 0, 30, [0, 4, 0])})  # looks like progan: accepted
  fitted = openset.fit(np.concatenate([s["logits"] for n, s in srcs.items()
                                       if s["class"] != classes.UNSEEN]),
                       np.zeros(120, int), ["bona_fide", "progan", "dcgan"], 0.9)
  # A bona fide camera never seen in training: class 0, but not a known source.
  srcs["real2"] = {"logits": rng.normal(size=(50, 3)), "label": 1, "class": 0}
  fitted["dev_sources"] = ["dcgan", "progan", "real"]
  out = evaluation.evaluate(srcs, fitted, n_resamples=300, seed=0)
  assert out["other_bona_fide_sources"] == ["real2"]
  assert out["known_sources"] == ["dcgan", "progan", "real"]
  known = [srcs[n] for n in ("real", "progan", "dcgan")]
  correct = np.concatenate([s["logits"].argmax(1) == s["class"] for s in known])
  assert out["closed_set_accuracy"]["value"] == pytest.approx(correct.mean())
  lo, hi = out["closed_set_accuracy"]["low"], out["closed_set_accuracy"]["high"]
  assert lo < correct.mean() < hi and hi - lo < 0.2
  assert out["chance"] == pytest.approx(60 / 120)
  per_class = [np.mean(s["logits"].argmax(1) == s["class"]) for s in known]
  assert out["balanced_accuracy"] == pytest.approx(np.mean(per_class))
  assert out["balanced_chance"] == pytest.approx(1 / 3)
  assert np.sum(out["confusion"]["counts"]) == 120
  assert out["unseen_sources"] == ["diffusion", "swagan"]
  # AUROC over the known *generators* only (bona fide left out).
  from sklearn.metrics import roc_auc_score
  k = openset.energy(np.concatenate([srcs["progan"]["logits"], srcs["dcgan"]["logits"]]))
  for fam in ("swagan", "diffusion"):
    u = openset.energy(srcs[fam]["logits"])
    want = roc_auc_score(np.r_[np.ones(k.size), np.zeros(u.size)], np.r_[k, u])
    got = out["open_set_auroc"]["per_family"][fam]
    assert got["value"] == pytest.approx(want)
    assert got["low"] <= want <= got["high"]
  per = out["open_set_auroc"]["per_family"]
  assert per["swagan"]["value"] > per["diffusion"]["value"] + 0.2
  for fam in ("swagan", "diffusion"):
    want = np.mean(openset.energy(srcs[fam]["logits"]) < fitted["threshold"])
    assert out["unknown_share"][fam] == pytest.approx(want)
  assert out["unknown_share"]["swagan"] > out["unknown_share"]["diffusion"]
  assert out["open_set_auroc"] is out["open_set_auroc_by_rule"]["energy"]
  assert set(out["open_set_auroc_by_rule"]) == set(openset.RULES)
  # The decisions table's rows add up to each source's images.
  assert {n: sum(r) for n, r in out["open_confusion"]["counts"].items()} == {
      n: len(s["logits"]) for n, s in srcs.items()}


def test_collect_takes_each_source_once_across_splits():
  a = _split(["real", "real", "progan"], "real_eval+progan_eval")
  b = _split(["real", "real", "dcgan", "dcgan"], "real_eval+dcgan_eval")
  la, lb = np.arange(9.0).reshape(3, 3), -np.arange(12.0).reshape(4, 3)
  got = evaluation.collect({a.name: (a, la), b.name: (b, lb)}, ["bona_fide", "progan"])
  assert sorted(got) == ["dcgan", "progan", "real"]
  np.testing.assert_array_equal(got["real"]["logits"], la[:2])  # from the first split only
  assert got["dcgan"]["class"] == classes.UNSEEN and got["progan"]["class"] == 1


# ---------------------------------------------------------------- end to end (folders)
# `attribution_run` (conftest.py): bona fide and two generators known in
# training as image folders, a third one unseen.
def test_a_run_reports_attribution_from_image_folders(attribution_run):
  workdir, proc = attribution_run
  out_dir = os.path.join(workdir, "eval", sorted(os.listdir(os.path.join(workdir, "eval")))[0])
  results = json.load(open(os.path.join(out_dir, "metrics.json")))
  entry = results["attribution"]
  assert entry["classes"] == ["bona_fide", "stripes", "upsample2"]
  assert entry["known_sources"] == ["real", "stripes", "upsample2"]
  assert entry["unseen_sources"] == ["upsample4"]
  # 16 bona fide (once, not once per split) + 16 per known generator.
  assert np.sum(entry["confusion"]["counts"]) == 48
  acc = entry["closed_set_accuracy"]
  assert acc["low"] <= acc["value"] <= acc["high"]
  assert acc["value"] > entry["chance"] + 0.15, entry  # the head learned something
  fam = entry["open_set_auroc"]["per_family"]["upsample4"]
  assert 0.0 <= fam["low"] <= fam["value"] <= fam["high"] <= 1.0
  assert 0.0 <= entry["unknown_share"]["upsample4"] <= 1.0
  assert os.path.getsize(os.path.join(out_dir, "attribution.png")) > 1000
  report = open(os.path.join(out_dir, "report.md")).read()
  assert "## Which generator" in report and "| upsample4 |" in report
  assert "Closed-set accuracy" in proc.stdout  # printed by the run, as the report
  # The dev fit travels with the checkpoint: classes in the config, threshold in the meta.
  from cmfl_jax.training import checkpointing
  kind, step = checkpointing.select_step(workdir, "best")
  meta = checkpointing.read_meta(checkpointing.make_managers(workdir)[kind], step)
  assert meta["config"]["attribution"]["classes"] == entry["classes"]
  assert meta["attribution"]["threshold"] == entry["threshold"]
  log = [json.loads(l) for l in open(os.path.join(workdir, "train_log.jsonl"))]
  val = [l for l in log if "val_attribution_accuracy" in l and "val_attribution_ce" in l]
  assert len(val) == 4
  # Keep-best validates the detection objective alone: the attribution term is
  # in the training loss but not in val_loss.
  best = min(val, key=lambda l: l["val_loss"])
  assert meta["step"] == best["step"] and meta["val_loss"] == pytest.approx(best["val_loss"])
  for l in val:  # the cmfl objective: 0.5 CMFL(rgb, freq) + 0.5 BCE(joint)
    assert l["val_loss"] == pytest.approx(0.5 * l["val_cmfl"] + 0.5 * l["val_bce_joint"])


def test_evaluating_again_from_a_config_without_classes_uses_the_checkpoints(
    attribution_run, attribution_data, cache_dir, tmp_path):
  import shutil
  workdir = str(tmp_path / "run")
  shutil.copytree(attribution_run[0], workdir)  # the shared run stays as it is
  proc = run_main(workdir, "--mode=eval", *ATTRIBUTION_FLAGS,
                  f"--config.data.data_root={attribution_data}",
                  "--config.data.eval_splits=('eval_upsample4',)", cache_dir=cache_dir)
  assert "| upsample4 |" in proc.stdout


def test_too_few_images_of_a_generator_stops_the_run_with_one_line(attribution_data, tmp_path,
                                                                  cache_dir):
  proc = run_main(str(tmp_path / "w"), *ATTRIBUTION_FLAGS,
                  f"--config.data.data_root={attribution_data}",
                  "--config.data.eval_splits=('eval_stripes',)",
                  "--config.attribution.min_train_images=64", cache_dir=cache_dir, check=False)
  assert proc.returncode == 1
  assert "too few training images" in proc.stderr and "Traceback" not in proc.stderr


def test_the_attribution_config_is_valid_and_holds_three_families_out():
  from cmfl_jax import config as config_lib
  from cmfl_jax.data.synthetic import FAMILIES
  import runpy
  config = runpy.run_path(str(ROOT / "configs" / "attribution.py"))["get_config"]()
  config_lib.validate(config)
  assert config.attribution.enabled and config.data.source == "synthetic"
  known = {p.split("_")[0] for p in config.data.train_split.split("+")} - {"real"}
  assert len(known) == 3 and known < set(FAMILIES)
  evaluated = {s.split("+")[1].split("_")[0] for s in config.data.eval_splits}
  assert set(FAMILIES) <= evaluated  # the three unseen families are scored too
