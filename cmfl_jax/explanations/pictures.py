"""Figures: one per explained image (image with its RGB heatmap, spectrum
with its frequency heatmap, radial profile of the frequency attribution) and
the evaluation report's per-split frequency picture. Matplotlib's object API
with the Agg canvas: no pyplot state, so figures are freed at once and memory
stays flat over thousands of images."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from cmfl_jax.explanations import radial


def _figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: str) -> None:
  import tensorflow as tf  # the workdir may be remote (gs://, ram://)
  with tf.io.gfile.GFile(path, "wb") as f:
    fig.savefig(f, format="png", dpi=90, bbox_inches="tight")


#: Colours of evidence for synthetic and for real (the service page's).
SYNTHETIC_COLOUR, REAL_COLOUR = "#c0392b", "#2166ac"


def evidence_colormap():
  """Blue (real) - light grey (none) - red (synthetic)."""
  from matplotlib.colors import LinearSegmentedColormap
  return LinearSegmentedColormap.from_list("evidence", [REAL_COLOUR, "#e6e6e6", SYNTHETIC_COLOUR])


def synthetic_evidence(maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Signed `[H, W]` maps, > 0 for synthetic: the attributions of the logit
  of P(real) with their sign turned, colour channels summed."""
  out = {}
  for key in ("rgb", "freq"):
    if key in maps:
      m = np.asarray(maps[key], np.float32)
      out[key] = -(m.sum(-1) if m.ndim == 3 else m)
  return out


def run_scale(maps: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Fixed colour / axis scales for a run, from a first batch of maps
  (`[B, H, W, 3]`): the 99th percentile of |evidence| per map, and of the
  radial profile of the frequency evidence."""
  out = {}
  for key, m in synthetic_evidence(maps).items():
    out[key] = float(np.percentile(np.abs(m), 99)) or 1.0
  if "freq" in maps:
    ev = synthetic_evidence(maps)["freq"]
    out["profile"] = float(np.nanmax(np.abs(radial.profile(ev)))) or 1.0
  return out


def explanation_figure(image: np.ndarray, maps: Mapping[str, np.ndarray],
                       scores: Mapping[str, float], path: str, title: str = "", verdict: str = "",
                       scale: Mapping[str, float] | None = None) -> None:
  """PNG of one image's signed evidence: `image` uint8 `[H, W, 3]`; `maps`
  holds "rgb" (pixels) and/or "freq" (spectrum) attributions of the logit
  of P(real); `verdict` goes in the title; `scale` fixes the colour and axis
  ranges (`run_scale`, the same for every picture of a run; default: this
  image's own)."""
  from cmfl_jax.explanations import evidence
  ev = synthetic_evidence(maps)
  scale = dict(scale or run_scale({k: np.asarray(v)[None] for k, v in maps.items()
                                    if k in ("rgb", "freq")}))
  panels = 1 + ("rgb" in ev) + 2 * ("freq" in ev)
  fig = _figure(3.6 * panels, 4.3)
  axes = fig.subplots(1, panels, squeeze=False)[0]
  cmap = evidence_colormap()
  axes[0].imshow(image, interpolation="lanczos")
  axes[0].set_title("the image", fontsize=10)
  axes[0].axis("off")
  k = 1
  if "rgb" in ev:
    ax = axes[k]
    ax.imshow(np.mean(image, -1), cmap="gray", interpolation="lanczos")
    top = scale.get("rgb", 1.0)
    shown = ax.imshow(ev["rgb"], cmap=cmap, vmin=-top, vmax=top, alpha=np.clip(
        np.abs(ev["rgb"]) / top, 0, 1) * 0.85, interpolation="bilinear")
    ax.set_title("where: evidence in the pixels", fontsize=10)
    ax.axis("off")
    bar = fig.colorbar(shown, ax=ax, orientation="horizontal", fraction=0.05, pad=0.03,
                       ticks=[-top, 0, top])
    bar.ax.set_xticklabels(["for real", "none", "for synthetic"], fontsize=8)
    bar.solids.set_alpha(1)
    k += 1
  if "freq" in ev:
    drawn = evidence.pattern(image, ev["freq"])
    axes[k].imshow(drawn, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    axes[k].set_title("the detail the weighed frequencies\ndraw in the image", fontsize=10)
    axes[k].axis("off")
    prof = radial.profile(ev["freq"])
    centres = 0.5 * (radial.ring_edges()[1:] + radial.ring_edges()[:-1])
    ax = axes[k + 1]
    ax.bar(centres, prof, width=0.07, color=[SYNTHETIC_COLOUR if v > 0 else REAL_COLOUR
                                             for v in np.nan_to_num(prof)])
    ax.axhline(0, color="0.5", lw=0.8)
    top = scale.get("profile", 1.0)
    ax.set_ylim(-1.05 * top, 1.05 * top)
    ax.set_yticks([-top, 0, top], ["for real", "0", "for synthetic"], fontsize=8)
    ax.set_xticks([0, 1.0], ["coarse\nshapes", "finest detail\n(Nyquist)"], fontsize=8)
    ax.set_xlabel("size of detail in the image", fontsize=9)
    ax.set_title("frequency evidence by detail size", fontsize=10)
  heads = ", ".join(f"{h} {100 * s:.1f} %" for h, s in scores.items() if h != "joint")
  joint = scores.get("joint")
  head = f"{verdict}" + (f" - P(real) {100 * joint:.1f} %" if joint is not None else "")
  fig.suptitle(f"{title}: {head}" if title else head, fontsize=12, fontweight="bold")
  fig.text(0.5, 0.01, "Red: evidence for synthetic. Blue: evidence for real. Colour and axis "
           "scales are the same for every picture of this run." + (
               f"  Streams alone: {heads}." if heads else ""), ha="center", fontsize=8.5)
  fig.tight_layout(rect=(0, 0.04, 1, 0.95))
  _save(fig, path)


def frequency_report_figure(entries: Mapping[str, Mapping[str, np.ndarray]], path: str) -> None:
  """Per split, one row: mean |frequency attribution| (2-D), mean spectrum
  difference bona fide - family (2-D), and both radial profiles (each scaled
  to its maximum so they share an axis)."""
  n = len(entries)
  fig = _figure(9.0, 2.6 * n)
  axes = fig.subplots(n, 3, squeeze=False)
  centres = 0.5 * (radial.ring_edges()[1:] + radial.ring_edges()[:-1])
  for row, (name, e) in zip(axes, entries.items()):
    im = row[0].imshow(e["attribution"], cmap="inferno")
    row[0].set_title(f"{name}: mean |freq attribution|", fontsize=7)
    fig.colorbar(im, ax=row[0], fraction=0.046)
    lim = float(np.max(np.abs(e["difference"]))) or 1.0
    im = row[1].imshow(e["difference"], cmap="coolwarm", vmin=-lim, vmax=lim)
    row[1].set_title("mean spectrum: bona fide - attack", fontsize=7)
    fig.colorbar(im, ax=row[1], fraction=0.046)
    for ax in row[:2]:
      ax.axis("off")
    for key, label in (("attribution_profile", "attribution"),
                       ("difference_profile", "|spectrum difference|")):
      p = np.asarray(e[key], np.float64)
      row[2].plot(centres, p / (np.nanmax(np.abs(p)) or 1.0), marker="o", ms=2, label=label)
    row[2].axvline(1.0, color="0.6", lw=0.8, ls=":")
    row[2].set_xlabel("radius / Nyquist", fontsize=7)
    row[2].tick_params(labelsize=6)
    row[2].legend(fontsize=6)
  fig.tight_layout()
  _save(fig, path)
