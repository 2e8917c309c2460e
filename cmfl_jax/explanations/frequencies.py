"""Which frequencies the model uses, per evaluated split: the mean
frequency attribution (integrated gradients over the frequency stream's
input, `saliency`) beside the mean spectrum difference between bona fide
and the split's generator family. One picture and a few numbers per split
for the evaluation report (`config.eval.explain_frequencies`).

On a capped, class-balanced, seeded subset of each split: attribution costs
a few dozen forward/backward passes per image.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from cmfl_jax.data import pipeline
from cmfl_jax.data.split import Split
from cmfl_jax.explanations import pictures, radial, saliency, streams
from cmfl_jax.training import steps

PICTURE = "frequencies.png"
MAPS = "frequencies.npz"
#: Radius / Nyquist above which a frequency counts as "high".
HIGH = 0.5


def subset(split: Split, max_images: int, seed: int) -> Split:
  """Up to `max_images` examples, half of each class where possible (seeded)."""
  rng = np.random.default_rng(seed)
  keep = np.zeros(len(split), bool)
  for label in (0, 1):
    idx = np.flatnonzero(split.labels == label)
    keep[rng.permutation(idx)[:max_images // 2]] = True
  return split.select(keep)


def summarise(model: streams.Model, splits: Mapping[str, Split], data_config: Any,
              max_images: int = 32, ig_steps: int = 8, batch_size: int = 16, seed: int = 0,
              out_dir: str | None = None) -> dict[str, Any]:
  """Per split: "images", radial profiles ("attribution_profile": mean
  |frequency attribution| per ring; "difference_profile": |mean spectrum of
  bona fide - of attacks| per ring), "profile_correlation" (Spearman of the
  two), "peak_radius" and "high_frequency_share" of the attribution. With
  `out_dir`, the 2-D maps go to frequencies.npz and the picture to
  frequencies.png there."""
  if "freq" not in streams.stream_names(model):
    return {"skipped": "the model has no frequency stream"}
  from scipy import stats as scipy_stats
  run = saliency.compile_method(model, "ig", ig_steps)
  centres = 0.5 * (radial.ring_edges()[1:] + radial.ring_edges()[:-1])
  out, maps = {"method": "ig", "ig_steps": ig_steps, "rings": centres.tolist(), "splits": {}}, {}
  for name, split in splits.items():
    small = subset(split, max_images, seed)
    attr, spec = [], {0: [], 1: []}
    for batch in pipeline.eval_dataset(small, data_config, batch_size).as_numpy_iterator():
      n = int(batch["mask"].sum())
      got = jax.device_get(run(batch["image"]))
      attr.append(radial.magnitude(np.asarray(got["freq"])[:n]))
      for label in (0, 1):
        chosen = batch["label"][:n] == label
        spec[label].append(np.asarray(got["spectrum"])[:n][chosen].mean(-1))
    if not attr:
      continue
    mean_attr = np.concatenate(attr).mean(0)
    means = {k: np.concatenate(v).mean(0) for k, v in spec.items() if sum(map(len, v))}
    diff = means[1] - means[0] if len(means) == 2 else np.zeros_like(mean_attr)
    a_prof, d_prof = radial.profile(mean_attr), radial.profile(np.abs(diff))
    high = radial.radius(*mean_attr.shape) > HIGH
    rho = scipy_stats.spearmanr(a_prof, d_prof).statistic if len(means) == 2 else float("nan")
    out["splits"][name] = {
        "images": int(len(small)), "attack_images": int(np.sum(small.labels == 0)),
        "attribution_profile": a_prof.tolist(), "difference_profile": d_prof.tolist(),
        "profile_correlation": float(rho),
        "peak_radius": float(centres[int(np.nanargmax(a_prof))]),
        "high_frequency_share": float(mean_attr[high].sum() / max(mean_attr.sum(), 1e-12))}
    maps[name] = {"attribution": mean_attr, "difference": diff,
                  "attribution_profile": a_prof, "difference_profile": d_prof}
  if out_dir and maps:
    np.savez_compressed(os.path.join(out_dir, MAPS), **{
        f"{n}/{k}": v for n, m in maps.items() for k, v in m.items()})
    pictures.frequency_report_figure(maps, os.path.join(out_dir, PICTURE))
    out["picture"] = PICTURE
  return out


def frequency_summary(config: ml_collections.ConfigDict, state: steps.TrainState,
                      splits: Mapping[str, Split], out_dir: str | None) -> dict[str, Any]:
  """`summarise` for `evaluate`: the model of a restored TrainState, the
  settings from `config.eval` (explain_images, explain_steps)."""
  if jax.process_count() > 1:
    logging.info("frequency attribution: single-process evaluations only; skipped")
    return {"skipped": "multi-process evaluation"}
  _, programs = steps.create_train_state(config, steps.make_mesh(), abstract=True)
  model = nnx.merge(programs.eval_graphdef, state.params, state.batch_stats)
  ev = config.eval
  return summarise(model, splits, config.data, int(ev.get("explain_images", 32)),
                   int(ev.get("explain_steps", 8)), seed=config.seed, out_dir=out_dir)


def report_lines(entry: Mapping[str, Any] | None) -> list[str]:
  """The report's section: a table of the numbers and the picture."""
  if not entry or not entry.get("splits"):
    return []
  rows = [[name, str(e["images"]), f"{e['peak_radius']:.2f}",
           f"{100 * e['high_frequency_share']:.0f}", f"{e['profile_correlation']:.2f}"]
          for name, e in entry["splits"].items()]
  header = ["eval split", "images", "peak radius / Nyquist", "attribution > Nyquist/2 %",
            "rank corr. with spectrum difference"]
  lines = ["## Frequencies the model uses (joint head)", "",
           f"Integrated gradients ({entry['ig_steps']} steps) of the joint logit over the "
           "frequency stream's input (log spectrum, DC at the centre), from the spectrum's "
           "radial mean, on a class-balanced subset of each split; beside it the mean "
           "spectrum difference between bona fide and that split's attacks, and both radial "
           "profiles. Numbers in metrics.json (`frequencies`), 2-D maps in frequencies.npz.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  if entry.get("picture"):
    lines += ["", f"![Frequency attribution per split]({entry['picture']})"]
  return lines + [""]
