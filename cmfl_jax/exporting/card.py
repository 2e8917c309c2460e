"""The model card: what the exported model is, what it was trained and
measured on, what it expects and what it must not be used for; as JSON for
programs (`model_card.json`, also what `predict --model` reads) and as
Markdown for people (`MODEL_CARD.md`)."""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

import jax

from cmfl_jax import models
from cmfl_jax.exporting import serving_fn

JSON_NAME = "model_card.json"
MARKDOWN_NAME = "MODEL_CARD.md"
FORMAT = "cmfl_jax.model_card/1"

INTENDED_USE = (
    "Scoring face images for being entirely synthetic (GAN / diffusion) or bona fide, as a "
    "research detector reproducing Ibsen et al. (IWBF 2024). Scores are P(real): 1 = bona "
    "fide, 0 = attack. A verdict is p_real >= threshold.")
LIMITS = (
    "Measured only on the evaluation splits listed here; scores on other generators, cameras, "
    "post-processing or face crops are not predicted by these numbers.",
    "Inputs must follow the input contract (size, alignment, RGB uint8); anything else is "
    "scored without complaint and the score means nothing.",
    "Not a face detector: an image without a face still gets a score.",
    "Not for decisions about people without human review; thresholds were fixed on the "
    "development set and their error rates vary with the data.",
    "Exported with XLA's own operations (the CPU GEMM kernels of training are not part of "
    "the artifact); lowered for the platforms listed, tested on CPU.",
)


def _sources(split: str) -> list[str]:
  """Source names of a split expression ("real_train+stylegan2_train")."""
  return [part.rsplit("_", 1)[0] if "_" in part else part for part in split.split("+") if part]


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _metrics_path(workdir: str, kind: str, step: int) -> str:
  return os.path.join(workdir, "eval", f"{kind}_{step}", "metrics.json")


def _evaluation(workdir: str, kind: str, step: int, config) -> dict[str, Any] | None:
  """Joint-head metrics with bootstrap intervals from `evaluate`'s metrics.json."""
  path = _metrics_path(workdir, kind, step)
  results = _read_json(path)
  if not results:
    return None
  splits = {name: {"count": entry.get("count"), "metrics": entry.get("intervals_joint"),
                   "accuracy@0.5": entry.get("metrics_joint", {}).get("accuracy")}
            for name, entry in results.get("splits", {}).items()}
  return {"source": os.path.relpath(path, workdir), "head": "joint",
          "confidence": config.eval.confidence,
          "bootstrap_resamples": config.eval.bootstrap_resamples, "splits": splits}


#: Open-set rule -> its score in words (`attribution.openset.RULES`).
RULE_WORDS = {"energy": "energy score, logsumexp of the attribution head's logits",
              "max_softmax": "largest softmax probability of the attribution head"}
#: What the card keeps of metrics.json's `attribution` entry.
_ATTRIBUTION_METRICS = ("closed_set_accuracy", "chance", "balanced_accuracy", "balanced_chance",
                        "per_class_accuracy", "known_rejected", "known_sources",
                        "unseen_sources", "unknown_share", "open_set_auroc")


def _attribution(workdir: str, restored: serving_fn.Restored, fitted: dict) -> dict[str, Any]:
  """The attribution head's classes, its open-set rule and threshold, what the
  outputs mean, and its evaluation where metrics.json has one."""
  path = _metrics_path(workdir, restored.kind, restored.step)
  measured = (_read_json(path) or {}).get("attribution")
  return {"classes": list(fitted["classes"]), "rule": fitted["rule"],
          "score": RULE_WORDS.get(fitted["rule"], fitted["rule"]),
          "threshold": fitted["threshold"], "known_acceptance": fitted.get("known_acceptance"),
          "dev_images": fitted.get("dev_images"),
          "decision": "generator_index = the most likely class where the score is >= "
                      "threshold, else -1 (unknown: none of the classes); the threshold "
                      "accepts known_acceptance of the dev split's known-class images",
          "evaluation": measured and {"source": os.path.relpath(path, workdir),
                                      **{k: measured[k] for k in _ATTRIBUTION_METRICS
                                         if k in measured}}}


def build(workdir: str, restored: serving_fn.Restored, constants: serving_fn.Constants,
          calibration: dict | None, outputs: list[str], artifacts: dict) -> dict[str, Any]:
  """The card as a JSON-able dict (`attribution` only for a model with that head)."""
  config, data, model = restored.config, restored.config.data, restored.model
  report = _read_json(os.path.join(workdir, "data_report.json")) or {}
  size = int(data.image_size)
  attribution = ({"attribution": _attribution(workdir, restored, constants.attribution)}
                 if constants.attribution else {})
  return {
      "format": FORMAT,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "architecture": {
          "arch": model.arch, "input": model.input if model.arch == "one_stream" else "rgb+freq",
          "backbone": config.model.backbone, "num_blocks": model.num_blocks,
          "growth_rate": model.spec.growth_rate, "block_config": list(model.spec.block_config),
          "parameters": models.count_params(restored.params), "objective": config.loss.objective,
          "dtype": str(jax.numpy.dtype(model.dtype)), "ops": "xla (portable; training used "
          f"{config.model.get('ops', 'auto')!r})"},
      "config": config.to_dict(),
      "training_data": {
          "source": data.source, "synthetic_config": data.get("synthetic_config"),
          "train_split": data.train_split, "val_split": data.val_split,
          "eval_splits": list(data.eval_splits), "train_sources": _sources(data.train_split),
          "data_root": data.get("data_root"), "protocol_dir": data.get("protocol_dir"),
          "audit": report.get("audit"),
          "skipped_per_split": report.get("skipped_per_split")},
      "checkpoint": {"workdir": os.path.abspath(workdir), "kind": restored.kind,
                     "step": restored.step, "fingerprint": restored.meta.get("fingerprint"),
                     "epoch": restored.meta.get("epoch"), "val_loss": restored.meta.get("val_loss")},
      "input": {"name": "images", "dtype": "uint8", "shape": ["batch", size, size, 3],
                "value_range": [0, 255], "channels": "RGB", "size": size,
                "aligned": bool(data.aligned),
                "alignment": ("face crops aligned as in training (MTCNN-aligned, "
                              "`python -m cmfl_jax.align`), resized to the size"
                              if data.aligned else
                              "resize the shorter side to 256/224 of the size, centre crop"),
                "inside": "ImageNet normalisation and the log-FFT spectrum are computed "
                          "inside the artifact from the raw pixels"},
      "outputs": {name: serving_fn.OUTPUTS[name] for name in outputs},
      "thresholds": {"dev": constants.dev_threshold,
                     "dev_stored": restored.meta.get("dev_threshold") is not None,
                     "calibration": constants.calibration_threshold},
      # The dev-set Platt scaling of p_real (p_real_platt), and the named
      # calibration (python -m cmfl_jax.calibrate) whose threshold decides.
      "platt_scaling": restored.meta.get("calibration"),
      "calibration": {"chosen": None if calibration is None else {
                          k: calibration[k] for k in ("name", "threshold", "record")}},
      # The dev-fitted unsure band of the checkpoint (`verdicts.selective`);
      # a chosen calibration's own band is in its record.
      "unsure_band": restored.meta.get("unsure_band"),
      "operating_points": restored.meta.get("operating_points"),
      **attribution,
      "evaluation": _evaluation(workdir, restored.kind, restored.step, config),
      "intended_use": INTENDED_USE,
      "limits": list(LIMITS),
      "artifacts": artifacts,
  }


def _fmt(value: Any) -> str:
  return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown(card: dict[str, Any]) -> str:
  """MODEL_CARD.md: the same facts, for reading."""
  arch, data, ck, inp = (card["architecture"], card["training_data"], card["checkpoint"],
                         card["input"])
  lines = [f"# Model card: {arch['arch']} {arch['backbone']} ({arch['objective']})", "",
           card["intended_use"], "", "## Architecture", ""]
  lines += [f"- {k}: {_fmt(v)}" for k, v in arch.items()]
  lines += ["", "Full training config: `config` in model_card.json.", "", "## Training data", ""]
  lines += [f"- {k}: {_fmt(v)}" for k, v in data.items() if k != "audit"]
  lines += [f"- audit: {json.dumps(data['audit']) if data['audit'] else 'none recorded'}", "",
            "## Checkpoint", ""]
  lines += [f"- {k}: {_fmt(v)}" for k, v in ck.items()]
  lines += ["", "## Input contract", ""]
  lines += [f"- {k}: {v}" for k, v in inp.items()]
  lines += ["", "## Outputs", ""]
  lines += [f"- `{k}`: {v}" for k, v in card["outputs"].items()]
  th, cal, platt = card["thresholds"], card["calibration"], card.get("platt_scaling")
  lines += ["", "## Thresholds and calibration", "",
            f"- dev threshold (EER on the dev set): {_fmt(th['dev'])}"
            + ("" if th["dev_stored"] else " (none stored: 0.5)"),
            f"- Platt scaling (dev set): {platt or 'none (p_real_platt = p_real)'}",
            "- calibration (threshold with a false-alarm guarantee): " + (f"{cal['chosen']['name']}, threshold "
                                         f"{_fmt(cal['chosen']['threshold'])}"
                                         if cal["chosen"] else "none"),
            ""] + _attribution_markdown(card.get("attribution")) + ["## Evaluation", ""]
  ev = card["evaluation"]
  if not ev:
    lines.append("No evaluation of this checkpoint found (`python -m cmfl_jax.main --mode=eval`).")
  else:
    lines += [f"Joint head, {ev['confidence']:.0%} stratified-bootstrap intervals "
              f"({ev['bootstrap_resamples']} resamples), from `{ev['source']}`.", "",
              "| split | n | D-EER | AUC | APCER@dev | BPCER@dev |", "|---|---|---|---|---|---|"]
    for name, entry in ev["splits"].items():
      m = entry["metrics"] or {}
      cell = lambda k: (f"{m[k]['value']:.4f} [{m[k]['low']:.4f}, {m[k]['high']:.4f}]"  # noqa: E731
                        if k in m else "-")
      lines.append(f"| {name} | {entry['count']} | {cell('d_eer')} | {cell('auc')} | "
                   f"{cell('apcer@dev')} | {cell('bpcer@dev')} |")
  lines += ["", "## Known limits", ""] + [f"- {x}" for x in card["limits"]]
  lines += ["", "## Artifacts", ""] + [f"- {k}: {json.dumps(v)}"
                                       for k, v in card["artifacts"].items()]
  return "\n".join(lines) + "\n"


def _attribution_markdown(entry: dict[str, Any] | None) -> list[str]:
  """The "Generator attribution" section (none without the head)."""
  if not entry:
    return []
  indexed = ", ".join(f"{i}: {c}" for i, c in enumerate(entry["classes"]))
  lines = ["## Generator attribution", "", f"- classes (index: name): {indexed}",
           f"- open-set rule: {entry['rule']} ({entry['score']}), threshold "
           f"{_fmt(entry['threshold'])}, accepting {_fmt(entry['known_acceptance'])} of the "
           f"{entry['dev_images']} known-class dev images",
           f"- decision: {entry['decision']}"]
  ev = entry.get("evaluation")
  if ev:
    acc = ev.get("closed_set_accuracy")
    if acc:
      lines.append(f"- closed-set accuracy: {acc['value']:.4f} [{acc['low']:.4f}, "
                   f"{acc['high']:.4f}] (chance {_fmt(ev.get('chance'))}), from `{ev['source']}`")
    lines.append(f"- known images called unknown: {_fmt(ev.get('known_rejected'))}")
    lines += [f"- unseen {name} called unknown: {_fmt(share)}"
              for name, share in (ev.get("unknown_share") or {}).items()]
  lines.append("- limits: \"unknown\" is measured only on the unseen generators listed here"
               + ("" if ev and ev.get("unseen_sources") else " (none)")
               + "; a generator close to a known one may be named as that one.")
  return lines + [""]


def write(card: dict[str, Any], directory: str) -> None:
  """Both files of the card into `directory`."""
  with open(os.path.join(directory, JSON_NAME), "w") as f:
    json.dump(card, f, indent=2)
  with open(os.path.join(directory, MARKDOWN_NAME), "w") as f:
    f.write(markdown(card))
