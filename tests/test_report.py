"""Reports: Markdown tables carry the measured numbers, plots are written,
sweep configs and the combined cross-model report."""

import os
import runpy

import numpy as np
import pytest

from cmfl_jax.data.synthetic import FAMILIES
from cmfl_jax.evaluation import evaluate, report, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scores(seed, separation, n=60):
  rng = np.random.default_rng(seed)
  labels = np.repeat([1, 0], n // 2)
  scores = 1 / (1 + np.exp(-(rng.normal(size=n) + separation * (2 * labels - 1))))
  return labels, scores


def _results(curves, dev_threshold=0.5, conditions=("jpeg:70",), heads=("joint", "rgb")):
  splits = {}
  for name, (labels, scores) in curves.items():
    entry = {"count": len(labels), "loss": 0.3}
    for h in heads:
      entry[f"metrics_{h}"] = evaluate.split_metrics(labels, scores ** (1 if h == "joint" else 2),
                                                     dev_threshold)
    splits[name] = entry
  first = next(iter(curves))
  labels, scores = curves[first]
  robust = {first: {"none": splits[first]}}
  for c in conditions:
    robust[first][c] = {"count": len(labels), "loss": 0.5, "metrics_joint": evaluate.split_metrics(
        labels, np.clip(scores + 0.3 * (labels - 0.5), 0, 1), dev_threshold)}
  return {"checkpoint": "best_7", "step": 7, "val_loss": 0.25, "dev_threshold": dev_threshold,
          "model": {"arch": "two_stream", "input": "rgb", "backbone": "densenet161"},
          "objective": "cmfl", "train_split": "train", "splits": splits, "robustness": robust}


def test_eval_report_contains_the_measured_numbers(tmp_path):
  curves = {"real+a": _scores(0, 2.0), "real+b": _scores(1, 0.5)}
  results = _results(curves)
  path = report.write_eval_report(results, curves, str(tmp_path))
  text = open(path).read()
  for name, entry in results["splits"].items():
    m = entry["metrics_joint"]
    assert (f"| {name} | 60 | {100 * m['d_eer']:.1f} | {m['auc']:.3f} | "
            f"{m['average_precision']:.3f} | {100 * m['bpcer@apcer=0.01']:.1f} |") in text
    assert f"{100 * entry['metrics_rgb']['d_eer']:.1f}" in text
  jpeg = results["robustness"]["real+a"]["jpeg:70"]["metrics_joint"]
  assert (f"| jpeg:70 | {100 * jpeg['d_eer']:.1f} | {100 * jpeg['apcer@dev']:.1f} | "
          f"{100 * jpeg['bpcer@dev']:.1f} |") in text
  assert "Dev-EER threshold: 0.5000" in text
  for png in ("det.png", "hist.png"):
    data = open(tmp_path / png, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  # The better-separated split has the lower D-EER, in the report's own numbers.
  assert (results["splits"]["real+a"]["metrics_joint"]["d_eer"]
          < results["splits"]["real+b"]["metrics_joint"]["d_eer"])


def test_eval_scalars_cover_heads_and_conditions():
  curves = {"s": _scores(2, 1.0)}
  scalars = report.eval_scalars(_results(curves))
  assert scalars["eval/s/joint/d_eer"] == _results(curves)["splits"]["s"]["metrics_joint"]["d_eer"]
  assert "eval/s/rgb/auc" in scalars and "robustness/s/jpeg:70/apcer@dev" in scalars


def test_report_without_threshold_or_robustness(tmp_path):
  curves = {"only": _scores(3, 1.0)}
  results = _results(curves, dev_threshold=None, conditions=(), heads=("joint",))
  results["robustness"] = {}
  text = "\n".join(report.summary_lines(results))
  assert "not stored (0.5 used)" in text and "Robustness" not in text and "Per head" not in text


def paper_table_config(grid="full"):
  return runpy.run_path(os.path.join(ROOT, "configs", "paper_table.py"))["get_config"](grid)


def test_paper_table_grids_and_their_comparisons():
  families = paper_table_config("families")
  names = [n for n, _ in families.sweep.cells]
  assert len(names) == 12 and {n.partition("@")[2] for n in names} == set(FAMILIES)
  assert {n.partition("@")[0] for n in names} == {"fft/bce", "two_stream/cmfl"}
  # Only comparisons between models of the grid.
  assert tuple(families.sweep.compare) == (("two_stream/cmfl", "fft/bce"),)
  assert families.eval.conditions == () and families.sweep.seeds == ()
  seeds = paper_table_config("seeds")
  assert len(seeds.sweep.compare) == 3 and tuple(seeds.sweep.seeds) == (0, 1, 2)
  with pytest.raises(ValueError, match="grid must be one of"):
    paper_table_config("everything")


def _cells(config, variants=None, known=None):
  """The paper-table cells, optionally reduced to some variants / families."""
  keep = [(n, o) for n, o in config.sweep.cells
          if (variants is None or n.partition("@")[0] in variants)
          and (known is None or n.partition("@")[2] in known)]
  config.sweep.cells = tuple(keep)
  return sweep.cells(config)


def test_sweep_cells_are_plain_overrides_of_any_depth():
  config = paper_table_config()
  names = [n for n, _ in config.sweep.cells]
  assert len(names) == 12 and "fft/bce@swagan" in names
  cell = dict(sweep.cells(config))["fft/bce@swagan"]
  assert "sweep" not in cell
  assert cell.data.train_split == "real_train+swagan_train"
  assert cell.data.val_split == "real_dev+swagan_dev"
  assert cell.data.eval_splits[-1] == "real2_eval+swagan_eval"
  assert len(cell.data.eval_splits) == 7
  assert tuple(cell.eval.robustness_splits) == ("real_eval+swagan_eval",)
  assert (cell.model.arch, cell.model.input, cell.loss.objective) == ("one_stream", "freq", "bce")
  assert config.data.train_split == "real_train+stylegan2_train"  # the base is untouched
  assert sweep.run_dir("/w", "fft/bce@swagan") == os.path.join("/w", "swagan", "fft_bce")
  with pytest.raises(ValueError, match="not a config key"):
    sweep.cell_config(config, {"model.arhc": "x"})
  config.sweep.cells = (("a", {}), ("a", {}))
  with pytest.raises(ValueError, match="repeat"):
    sweep.cells(config)


def test_sweep_report_matrix(tmp_path):
  config = paper_table_config()
  cells = _cells(config, ("rgb/bce", "two_stream/cmfl"), ("stylegan2", "swagan"))
  results, expected = {}, {}
  for i, (name, cell) in enumerate(cells):
    curves = {s: _scores(10 * i + j, 0.5 + j / 3) for j, s in enumerate(cell.data.eval_splits)}
    results[name] = _results(curves)
    expected[name] = [100 * results[name]["splits"][s]["metrics_joint"]["d_eer"]
                      for s in cell.data.eval_splits]
  path = report.write_sweep_report(cells, results, str(tmp_path))
  text = open(path).read()
  assert ("| model | known | progan | dcgan | stylegan2 | stylegan3 | swagan | diffusion | "
          "real2+known |") in text
  for name, row in expected.items():
    variant, _, known = name.partition("@")
    assert f"| {variant} | {known} | " + " | ".join(f"{v:.1f}" for v in row) + " |" in text
  assert open(tmp_path / "heatmap.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.exists(tmp_path / "sweep.json")


def test_sweep_runs_every_cell_in_its_own_workdir(tmp_path, monkeypatch):
  """Orchestration only (training and evaluation themselves are covered by the
  engine tests): every cell gets its config and workdir, then one report."""
  config = paper_table_config()
  _cells(config, known=("stylegan2", "swagan"))
  trained, evaluated = [], []
  monkeypatch.setattr(sweep.train, "train_and_evaluate",
                      lambda cfg, wd: trained.append((cfg.model.arch, cfg.loss.objective,
                                                      cfg.data.train_split, wd)))

  def fake_eval(cfg, wd):
    evaluated.append(wd)
    curves = {s: _scores(len(evaluated) + j, 1.0) for j, s in enumerate(cfg.data.eval_splits)}
    return _results(curves)

  monkeypatch.setattr(sweep.evaluate, "evaluate_checkpoint", fake_eval)
  results = sweep.run_sweep(config, str(tmp_path), "train_and_eval")
  assert len(trained) == len(evaluated) == len(results) == 8
  assert ("one_stream", "bce", "real_train+swagan_train",
          str(tmp_path / "swagan" / "fft_bce")) in trained
  assert len(set(evaluated)) == 8
  assert (tmp_path / "report.md").exists()
  trained.clear()
  assert sweep.run_sweep(config, str(tmp_path), "train") == {} and len(trained) == 8


def test_eval_report_carries_intervals_operating_points_and_calibration(tmp_path):
  """Every headline number with its bootstrap interval; thresholds fixed on a
  dev set applied unchanged (a shifted split is called miscalibrated in
  words); ECE before/after a Platt calibration, AUC unchanged by it."""
  from cmfl_jax.evaluation import stats
  dev_labels, dev_scores = _scores(5, 1.5, n=400)
  ops = stats.dev_operating_points(dev_labels, dev_scores)
  calibration = stats.fit_platt(dev_labels, evaluate.logits_of(dev_scores))
  same = _scores(6, 1.5, n=400)
  shifted = (same[0], 1 / (1 + np.exp(-(np.log(same[1] / (1 - same[1])) - 3.0))))  # all lower
  results = _results({"same": same, "shifted": shifted}, dev_threshold=ops["eer"])
  for name, (labels, scores) in {"same": same, "shifted": shifted}.items():
    entry = results["splits"][name]
    entry["intervals_joint"] = evaluate.split_intervals(labels, scores, ops["eer"], 300, 0.95, 0)
    entry["operating_points"] = stats.evaluate_operating_points(labels, scores, ops, 300)
    entry["calibration"] = evaluate.calibration_entry(labels, scores, calibration, 15)
    ci = entry["intervals_joint"]["d_eer"]
    assert ci["low"] <= entry["metrics_joint"]["d_eer"] <= ci["high"] and ci["low"] < ci["high"]
    assert entry["calibration"]["auc_calibrated"] == entry["metrics_joint"]["auc"]
  assert results["splits"]["shifted"]["operating_points"]["eer_transfer"]["miscalibrated"]
  assert not results["splits"]["same"]["operating_points"]["eer_transfer"]["miscalibrated"]
  path = report.write_eval_report(results, {"same": same, "shifted": shifted}, str(tmp_path))
  text = open(path).read()
  m, ci = results["splits"]["same"]["metrics_joint"], results["splits"]["same"]["intervals_joint"]
  assert f"{100 * m['d_eer']:.1f} [{100 * ci['d_eer']['low']:.1f}, {100 * ci['d_eer']['high']:.1f}]" in text
  assert "## Operating points fixed on the dev set" in text and "ranks well but miscalibrated" in text
  assert "## Calibration" in text and "15 equal-width bins" in text
  assert open(tmp_path / "reliability.png", "rb").read(4) == b"\x89PNG"


def test_sweep_over_seeds_reports_spread_and_a_planted_difference(tmp_path, monkeypatch):
  """Three seeds per cell: mean ± std in the matrix, and the paired test finds
  the planted gap between two models (p < 0.05, marked) on the same images."""
  from cmfl_jax.data.split import Files, Split
  from cmfl_jax.evaluation import score_files
  config = paper_table_config()
  _cells(config, ("two_stream/cmfl", "two_stream/bce"), ("stylegan2",))
  config.sweep.seeds = (0, 1, 2)
  config.sweep.compare = (("two_stream/cmfl", "two_stream/bce"),)
  monkeypatch.setattr(sweep.train, "train_and_evaluate", lambda cfg, wd: None)

  def fake_eval(cfg, wd):
    good = cfg.loss.objective == "cmfl"
    curves = {s: _scores(100 * cfg.seed + j + (0 if good else 50), 2.0 if good else 0.6, n=200)
              for j, s in enumerate(cfg.data.eval_splits)}
    os.makedirs(wd, exist_ok=True)
    for s, (labels, scores) in curves.items():
      split = Split(s, labels, np.where(labels == 1, "real", "g"),
                    Files(np.asarray([f"{s}/{i}" for i in range(len(labels))])))
      score_files.write_scores(os.path.join(wd, f"{s}_scores.csv"), split, scores)
    return {**_results(curves), "out_dir": wd}

  monkeypatch.setattr(sweep.evaluate, "evaluate_checkpoint", fake_eval)
  results = sweep.run_sweep(config, str(tmp_path), "train_and_eval")
  assert [len(v) for v in results.values()] == [3, 3]
  assert (tmp_path / "stylegan2" / "two_stream_cmfl" / "seed2").is_dir()
  text = open(tmp_path / "report.md").read()
  assert "mean ± standard deviation over 3 seeds" in text and " ± " in text
  assert "## Paired comparisons" in text
  rows = [l for l in text.splitlines() if l.startswith("| two_stream/cmfl - two_stream/bce")]
  assert len(rows) == 7 and all(l.endswith(" * |") for l in rows)
  assert all("[-" in l for l in rows)  # cmfl's D-EER is lower: negative difference


def test_eval_config_is_typed_once_from_the_config():
  """`config.eval` becomes `EvalConfig` before any work: robustness splits
  resolved (all eval splits by default, none without conditions), the seed of
  the bootstrap carried, a bad split or condition refused in one line."""
  config = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "configs",
                                       "smoke.py"))["get_config"]()
  config.data.eval_splits = ("eval", "other")
  config.eval.conditions = ("jpeg:50",)
  config.eval.robustness_splits = ()
  config.seed = 7
  ev = evaluate.EvalConfig.from_config(config)
  assert ev.robustness_splits == ("eval", "other") and ev.conditions == ("jpeg:50",)
  assert ev.seed == 7 and ev.bootstrap_resamples == config.eval.bootstrap_resamples
  config.eval.robustness_splits = ("other",)
  assert evaluate.EvalConfig.from_config(config).robustness_splits == ("other",)
  config.eval.conditions = ()
  assert evaluate.EvalConfig.from_config(config).robustness_splits == ()
  config.eval.robustness_splits = ("missing",)
  with pytest.raises(ValueError, match=r"\['missing'\] are not in data.eval_splits"):
    evaluate.EvalConfig.from_config(config)
  config.eval.robustness_splits = ()
  config.eval.conditions = ("sharpen:2",)
  with pytest.raises(ValueError):
    evaluate.EvalConfig.from_config(config)
