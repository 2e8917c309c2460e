"""Classical peer baseline: Durall et al., "Watch your Up-Convolution" (CVPR 2020).

Feature: the azimuthally averaged log power spectrum of the grey image (1-D,
one value per integer radius), min-max normalised per image; classifier:
L2-regularised logistic regression (Newton's method, NumPy).

  python -m cmfl_jax.tools.durall [--synthetic_config=64] [--known=stylegan2|all]

trains on real + the known family of the embedded benchmark (or, with
`all`, on each family in turn) and prints the D-EER on each family's eval
split (real eval + that family), as JSON lines and a Markdown table (the
in-distribution cell in bold).
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags

from cmfl_jax.evaluation import metrics

FLAGS = flags.FLAGS


def azimuthal_features(images: np.ndarray) -> np.ndarray:
  """[N, H, W, 3] uint8/float -> [N, min(H, W) // 2] normalised radial log spectra."""
  x = np.asarray(images, np.float64).mean(-1)
  h, w = x.shape[1:]
  power = np.abs(np.fft.fftshift(np.fft.fft2(x), axes=(1, 2))) ** 2
  logp = np.log(power + 1e-8)
  yy, xx = np.indices((h, w))
  r = np.hypot(yy - h // 2, xx - w // 2).astype(int).ravel()
  nbins = min(h, w) // 2
  keep = r < nbins
  counts = np.bincount(r[keep], minlength=nbins)
  prof = np.stack([np.bincount(r[keep], weights=img.ravel()[keep], minlength=nbins) / counts
                   for img in logp])
  lo, hi = prof.min(1, keepdims=True), prof.max(1, keepdims=True)
  return (prof - lo) / np.maximum(hi - lo, 1e-12)


class LogisticRegression:
  """Binary logistic regression with L2 penalty, fitted by Newton's method."""

  def __init__(self, l2: float = 1e-3, iters: int = 50):
    self.l2, self.iters = l2, iters

  def fit(self, x: np.ndarray, y: np.ndarray) -> "LogisticRegression":
    self.mean, self.std = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([(x - self.mean) / self.std, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    reg = self.l2 * len(x) * np.eye(z.shape[1])
    reg[-1, -1] = 0.0
    for _ in range(self.iters):
      p = 1 / (1 + np.exp(-z @ w))
      grad = z.T @ (p - y) + reg @ w
      hess = (z * (p * (1 - p))[:, None]).T @ z + reg
      step = np.linalg.solve(hess, grad)
      w -= step
      if np.abs(step).max() < 1e-8:
        break
    self.w = w
    return self

  def predict_proba(self, x: np.ndarray) -> np.ndarray:
    z = np.hstack([(x - self.mean) / self.std, np.ones((len(x), 1))])
    return 1 / (1 + np.exp(-z @ self.w))


def cross_model_eers(builder, known: str, features: dict | None = None) -> dict[str, float]:
  """Train on real_train + <known>_train; D-EER per family on real_eval + <family>_eval.
  `features` caches each split's (features, labels) across calls."""
  from cmfl_jax.data import synthetic
  features = {} if features is None else features

  def load(split):
    if split not in features:
      ds = builder.as_data_source(split=split)
      features[split] = (azimuthal_features(np.stack([ex["image"] for ex in ds])),
                         np.asarray([ex["label"] for ex in ds]))
    return features[split]

  clf = LogisticRegression().fit(*load(f"real_train+{known}_train"))
  out = {}
  for fam in synthetic.FAMILIES + ("real2",):
    split = f"real_eval+{fam}_eval" if fam != "real2" else f"real2_eval+{known}_eval"
    xe, ye = load(split)
    out[split] = metrics.eer(ye, clf.predict_proba(xe))[0]
  return out


def main(argv) -> None:
  del argv
  from cmfl_jax.data import synthetic
  from cmfl_jax.data.synthetic import builder as synthetic_builder
  builder = synthetic_builder.prepare(FLAGS.synthetic_config, FLAGS.tfds_data_dir)
  knowns = synthetic.FAMILIES if FLAGS.known == "all" else (FLAGS.known,)
  cache: dict = {}
  table = {known: cross_model_eers(builder, known, cache) for known in knowns}
  for known, eers in table.items():
    for split, rate in eers.items():
      print(json.dumps({"baseline": "durall2020", "config": FLAGS.synthetic_config,
                        "known": known, "eval": split, "d_eer": round(rate, 4)}))
  columns = synthetic.FAMILIES + ("real2",)
  print(f"\nDurall 2020 D-EER % ({FLAGS.synthetic_config}; rows: known family, columns: "
        "real_eval + <family>_eval; real2: real2_eval + <known>_eval)\n")
  print("| known | " + " | ".join(columns) + " |\n|---|" + "---:|" * len(columns))
  for known, eers in table.items():
    cells = [f"**{100 * r:.1f}**" if split == f"real_eval+{known}_eval" else f"{100 * r:.1f}"
             for split, r in eers.items()]
    print(f"| {known} | " + " | ".join(cells) + " |")


def define_flags() -> None:
  """Flags are defined only when run as a program (modules stay importable together)."""
  flags.DEFINE_string("synthetic_config", "64", "cmfl_synth_faces config.")
  flags.DEFINE_string("known", "stylegan2", "Family seen in training, or 'all' (one row each).")
  flags.DEFINE_string("tfds_data_dir", "", "TFDS data dir ('' = default).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
