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


def _heat(ax, background: np.ndarray, heat: np.ndarray, title: str, cmap_bg: str = "gray"):
  ax.imshow(background, cmap=cmap_bg if background.ndim == 2 else None)
  top = float(np.max(heat)) or 1.0
  ax.imshow(heat / top, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
  ax.set_title(title, fontsize=8)
  ax.axis("off")


def explanation_figure(image: np.ndarray, maps: Mapping[str, np.ndarray], scores: Mapping[str, float],
                       path: str, title: str = "") -> None:
  """PNG of one image's maps: `image` uint8 `[H, W, 3]`; `maps` holds "rgb"
  and/or "freq" (and "spectrum" for the background of the latter)."""
  panels = 1 + ("rgb" in maps) + 2 * ("freq" in maps)
  fig = _figure(2.6 * panels, 2.8)
  axes = fig.subplots(1, panels, squeeze=False)[0]
  axes[0].imshow(image)
  axes[0].set_title("input, " + ", ".join(f"{h} {s:.2f}" for h, s in scores.items()), fontsize=7)
  axes[0].axis("off")
  k = 1
  if "rgb" in maps:
    _heat(axes[k], np.mean(image, -1), radial.magnitude(maps["rgb"]), "pixels: |attribution|")
    k += 1
  if "freq" in maps:
    freq = radial.magnitude(maps["freq"])
    background = np.mean(maps["spectrum"], -1) if "spectrum" in maps else np.zeros_like(freq)
    _heat(axes[k], background, freq, "spectrum (DC centre): |attribution|")
    prof = radial.profile(freq)
    centres = 0.5 * (radial.ring_edges()[1:] + radial.ring_edges()[:-1])
    axes[k + 1].plot(centres, prof, marker="o", ms=2)
    axes[k + 1].axvline(1.0, color="0.6", lw=0.8, ls=":")
    axes[k + 1].set_xlabel("radius / Nyquist", fontsize=7)
    axes[k + 1].set_ylabel("mean |attribution|", fontsize=7)
    axes[k + 1].set_title("frequency attribution, radial", fontsize=8)
    axes[k + 1].tick_params(labelsize=6)
  if title:
    fig.suptitle(title, fontsize=8)
  fig.tight_layout()
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
