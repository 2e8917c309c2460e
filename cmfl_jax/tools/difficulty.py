"""How hard the embedded benchmark is, for the wrong reasons (issue #20):
statistics a detector could win with without learning any generator trace.

* Sharpness alone: the variance of the Laplacian and the fraction of
  spectral energy above half Nyquist, each used as a one-number detector;
  its AUC against the bona fide images (0.5 = no shortcut; reported as
  max(AUC, 1 - AUC), so the direction does not matter).
* Mean radial power spectra (log, per radial frequency bin) of the bona
  fide images and of each family, and their largest gap in dB up to half
  Nyquist: a visible quality gap (blur, blocks) shows up here as a gap.

Run: `python -m cmfl_jax.tools.difficulty --size=64 --num=300 --out=DIR
[--version=1.0.0]` (writes difficulty.json and difficulty.png, a grid of examples per class
beside the mean log spectra).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
from absl import app, flags

from cmfl_jax.data.synthetic.sampler import LATEST, sample
from cmfl_jax.data.synthetic.simulate import FAMILIES
from cmfl_jax.evaluation import metrics


def _grey(images: np.ndarray) -> np.ndarray:
  """[N, H, W, 3] uint8 -> [N, H, W] float luminance in [0, 1]."""
  return images.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0


def laplacian_variance(images: np.ndarray) -> np.ndarray:
  """Per image: variance of the 4-neighbour Laplacian of the luminance
  (interior pixels): the usual one-number focus measure."""
  g = _grey(images)
  lap = (g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:]
         - 4 * g[:, 1:-1, 1:-1])
  return lap.reshape(len(g), -1).var(axis=1)


def _power(images: np.ndarray) -> np.ndarray:
  """Per image centred power spectrum of the luminance, mean removed, with a
  Hann window against the border's spectral leakage."""
  g = _grey(images)
  g = g - g.mean(axis=(1, 2), keepdims=True)
  window = np.outer(np.hanning(g.shape[1]), np.hanning(g.shape[2]))
  return np.abs(np.fft.fftshift(np.fft.fft2(g * window), axes=(1, 2))) ** 2


def _radius(shape: tuple[int, int]) -> np.ndarray:
  """Radial frequency of each centred FFT bin, in cycles/pixel (0 .. ~0.7)."""
  fy = np.fft.fftshift(np.fft.fftfreq(shape[0]))
  fx = np.fft.fftshift(np.fft.fftfreq(shape[1]))
  return np.hypot(fy[:, None], fx[None, :])


def high_frequency_fraction(images: np.ndarray) -> np.ndarray:
  """Per image: fraction of the spectral energy above half Nyquist (0.25
  cycles/pixel, radially)."""
  p = _power(images)
  high = _radius(p.shape[1:]) > 0.25
  return p[:, high].sum(axis=1) / np.maximum(p.reshape(len(p), -1).sum(axis=1), 1e-30)


def radial_spectrum(images: np.ndarray, bins: int = 24) -> tuple[np.ndarray, np.ndarray]:
  """(bin centres in cycles/pixel up to Nyquist 0.5, mean log10 power per
  bin over the images)."""
  p = _power(images).mean(axis=0)
  r = _radius(p.shape)
  edges = np.linspace(0.0, 0.5, bins + 1)
  which = np.digitize(r, edges) - 1
  inside = (which >= 0) & (which < bins)
  sums = np.bincount(which[inside], p[inside], bins)
  counts = np.bincount(which[inside], None, bins)
  return (edges[:-1] + edges[1:]) / 2, np.log10(np.maximum(sums / np.maximum(counts, 1), 1e-30))


def separability(bona_fide: np.ndarray, attack: np.ndarray) -> float:
  """max(AUC, 1 - AUC) of one statistic as a detector: 0.5 = useless."""
  labels = np.r_[np.ones(len(bona_fide)), np.zeros(len(attack))]
  auc = metrics.roc_auc(labels, np.r_[bona_fide, attack])
  return float(max(auc, 1.0 - auc))


def measure(classes: dict[str, np.ndarray], bona_fide: str = "real") -> dict[str, Any]:
  """Sharpness AUCs and spectrum gaps of every class against `bona_fide`."""
  stats = {name: {"laplacian_variance": laplacian_variance(x),
                  "high_frequency_fraction": high_frequency_fraction(x)}
           for name, x in classes.items()}
  spectra = {name: radial_spectrum(x) for name, x in classes.items()}
  freqs, ref = spectra[bona_fide]
  below_half = freqs <= 0.25
  out: dict[str, Any] = {"bona_fide": bona_fide, "frequencies": freqs.round(4).tolist(),
                         "spectra_log10": {k: v[1].round(4).tolist() for k, v in spectra.items()},
                         "classes": {}}
  for name in classes:
    if name == bona_fide:
      continue
    gap_db = 10 * (spectra[name][1] - ref)
    out["classes"][name] = {
        **{f"auc_{k}": round(separability(stats[bona_fide][k], v), 4)
           for k, v in stats[name].items()},
        "max_spectrum_gap_db_to_half_nyquist": round(float(np.abs(gap_db[below_half]).max()), 2),
        "spectrum_gap_db_at_nyquist": round(float(gap_db[-1]), 2)}
  return out


def plot(classes: dict[str, np.ndarray], result: dict[str, Any], path: str,
         examples: int = 4) -> None:
  """Examples per class (rows) beside the mean log spectra."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(classes)
  fig = plt.figure(figsize=(2 * examples + 6, 1.6 * len(names)))
  grid = fig.add_gridspec(len(names), examples + 3)
  for row, name in enumerate(names):
    for col in range(examples):
      ax = fig.add_subplot(grid[row, col])
      ax.imshow(classes[name][col])
      ax.set_xticks([]), ax.set_yticks([])
      if col == 0:
        ax.set_ylabel(name)
  ax = fig.add_subplot(grid[:, examples:])
  for name in names:
    ax.plot(result["frequencies"], result["spectra_log10"][name], label=name,
            lw=2.5 if name == result["bona_fide"] else 1.2)
  ax.axvline(0.25, color="grey", ls=":", lw=1)
  ax.set_xlabel("radial frequency (cycles/pixel; dotted: half Nyquist)")
  ax.set_ylabel("mean log10 power")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=60)  # kept small: the picture is committed with the results
  plt.close(fig)


def run(size: int, num: int, split: str, seed: int, out_dir: str,
        version: str = LATEST) -> dict[str, Any]:
  """Measures `num` images per class of one split; writes the JSON and the picture."""
  classes = {name: np.stack(list(sample(name, split, num, size, seed, version)))
             for name in ("real", "real2", *FAMILIES)}
  result = {"version": version, "size": size, "num_per_class": num, "split": split,
            "seed": seed, **measure(classes)}
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "difficulty.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(classes, result, os.path.join(out_dir, "difficulty.png"))
  return result


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  result = run(f.size, f.num, f.split, f.seed, f.out, f.version)
  for name, row in result["classes"].items():
    print(json.dumps({"class": name, **row}))


def define_flags() -> None:
  """Flags are defined only when run as a program (modules stay importable together)."""
  flags.DEFINE_integer("size", 64, "Image size (64: the default benchmark config).")
  flags.DEFINE_integer("num", 300, "Images per class.")
  flags.DEFINE_string("split", "eval", "Split to sample.")
  flags.DEFINE_integer("seed", 0, "Benchmark seed.")
  flags.DEFINE_string("version", LATEST, "Benchmark version (1.0.0 or 2.0.0).")
  flags.DEFINE_string("out", None, "Output directory.", required=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
