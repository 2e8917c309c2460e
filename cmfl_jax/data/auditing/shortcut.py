"""The shortcut score: how well storage metadata alone (no pixels) predicts
the label, as the cross-validated ROC AUC of a small classifier, with the
features that separate the classes named, and the warning (with its remedy)
above a threshold."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

REMEDY = (
    "Set data.reencode (e.g. --config.data.reencode=jpeg:90) so every training image is "
    "re-encoded the same way (one format and quality) before augmentation, so storage no longer carries the label, and "
    "evaluate with the robustness conditions (re-compression, resizing) to check that "
    "the detector does not depend on storage.")

# name -> kind; "cat" features are one-hot encoded, "num" ones enter as numbers (NaN
# where undefined, which gradient boosting handles natively).
FEATURES: dict[str, str] = {
    "format": "cat", "jpeg_quality": "num", "jpeg_table": "cat", "subsampling": "cat",
    "progressive": "cat", "mode": "cat", "bit_depth": "cat", "lossless": "cat",
    "exif": "cat", "icc": "cat", "dpi": "cat", "width": "num", "height": "num",
    "aspect": "num", "bytes_per_pixel": "num", "file_kb": "num",
}
_FLAG_NAMES = {"exif": ("EXIF", "no EXIF"), "icc": ("ICC", "no ICC"), "dpi": ("dpi set", "no dpi")}


def _feature_columns(recs: Sequence[dict], features: Mapping[str, str]) -> dict[str, np.ndarray]:
  cols: dict[str, np.ndarray] = {}
  for name, kind in features.items():
    if kind == "cat":
      vals = []
      for r in recs:
        v = r.get(name)
        if name in _FLAG_NAMES:
          v = _FLAG_NAMES[name][0 if v else 1]
        elif name == "progressive":
          v = "n/a (not JPEG)" if v is None else ("progressive" if v else "baseline")
        elif name == "bit_depth":
          v = f"{v}-bit"
        elif v is None:
          v = "n/a (not JPEG)"
        vals.append(str(v))
      cols[name] = np.asarray(vals, dtype=object)
    else:
      if name == "aspect":
        v = [r["width"] / max(r["height"], 1) for r in recs]
      elif name == "file_kb":
        v = [r["bytes"] / 1024 for r in recs]
      else:
        v = [np.nan if r.get(name) is None else r[name] for r in recs]
      cols[name] = np.asarray(v, np.float64)
  return cols


def _codes(col: np.ndarray, kind: str) -> tuple[np.ndarray, list[str] | None]:
  """Integer categories for the univariate check: categorical values, the distinct values
  of a numeric feature with <= 12 of them, else its deciles (NaN its own category)."""
  if kind == "cat":
    labels, codes = np.unique(col.astype(str), return_inverse=True)
    return codes, list(labels)
  finite = col[np.isfinite(col)]
  distinct = np.unique(finite)
  if distinct.size <= 12:
    codes = np.where(np.isfinite(col), np.searchsorted(distinct, np.nan_to_num(col)), distinct.size)
    return codes, None
  edges = np.unique(np.quantile(finite, np.linspace(0, 1, 11)[1:-1]))
  codes = np.where(np.isfinite(col), np.searchsorted(edges, np.nan_to_num(col), side="right"),
                   edges.size + 1)
  return codes, None


def _oof_target_encoding_auc(codes: np.ndarray, y: np.ndarray, folds) -> float:
  """Cross-validated AUC of 'P(bona fide | category)' learned on the training folds."""
  from sklearn.metrics import roc_auc_score
  k = int(codes.max()) + 1
  oof = np.empty(y.size)
  for tr, te in folds:
    prior = y[tr].mean()
    pos = np.bincount(codes[tr], weights=y[tr], minlength=k)
    cnt = np.bincount(codes[tr], minlength=k)
    oof[te] = ((pos + prior) / (cnt + 1))[codes[te]]
  return float(roc_auc_score(y, oof))


def _value_label(name: str, v: Any) -> str:
  if name == "jpeg_quality":
    return "not JPEG" if not np.isfinite(v) else f"q{int(v)}"
  if isinstance(v, float):
    return f"{v:g}px" if name in ("width", "height") else f"{v:.3g}"
  return str(v)


def _class_distribution(name: str, col: np.ndarray) -> str:
  if col.size == 0:
    return "none"
  kind = FEATURES[name]
  if kind == "num" and np.unique(col[np.isfinite(col)]).size > 12:
    f = col[np.isfinite(col)]
    if not f.size:
      return "100% n/a"
    return f"median {np.median(f):.3g} (range {f.min():.3g}-{f.max():.3g})"
  c = Counter(_value_label(name, v) for v in col.tolist())
  top = c.most_common(3)
  s = ", ".join(f"{100 * n / col.size:.0f}% {v}" for v, n in top)
  return s + (f", ... ({len(c) - 3} more)" if len(c) > 3 else "")


def _storage_profile(recs: Sequence[dict]) -> str:
  """E.g. '100% JPEG q75 4:2:0' or '50% PNG, 50% JPEG q90 4:2:0'."""
  def key(r):
    if r["format"] == "JPEG":
      return f"JPEG q{r['jpeg_quality']} {r['subsampling']}"
    return r["format"]
  c = Counter(key(r) for r in recs)
  s = ", ".join(f"{100 * n / len(recs):.0f}% {k}" for k, n in c.most_common(3))
  return s + (f", ... ({len(c) - 3} more)" if len(c) > 3 else "")


def shortcut_score(recs: Sequence[dict], labels: np.ndarray, *, n_folds: int = 5,
                   seed: int = 0, max_samples: int = 20000,
                   features: Sequence[str] | None = None) -> dict[str, Any]:
  """How well storage metadata alone (no pixels) predicts the label.

  Gradient boosting on one-hot + numeric metadata, stratified k-fold ROC AUC (0.5 =
  no shortcut). Also a cross-validated univariate AUC per feature, to name what
  separates the classes, with each class's distribution. Degenerate inputs (a class
  with fewer readable files than folds) give status 'skipped' and a note. features:
  a subset of FEATURES' names (e.g. without the content-dependent bytes_per_pixel).
  """
  unknown = sorted(set(features or ()) - set(FEATURES))
  if unknown:
    raise ValueError(f"unknown shortcut features {unknown}; known: {list(FEATURES)}")
  features = dict(FEATURES) if features is None else {k: FEATURES[k] for k in features}
  from sklearn.ensemble import HistGradientBoostingClassifier
  from sklearn.metrics import roc_auc_score
  from sklearn.model_selection import StratifiedKFold
  import threadpoolctl  # a scikit-learn dependency

  y_all = np.asarray(labels).astype(int)
  keep = np.array([bool(r.get("ok")) for r in recs], bool)
  recs = [r for r, k in zip(recs, keep) if k]
  y = y_all[keep]
  n_bf, n_att = int((y == 1).sum()), int((y == 0).sum())
  out: dict[str, Any] = {"n": int(y.size), "n_bona_fide": n_bf, "n_attack": n_att,
                         "folds": n_folds, "auc": None, "status": "ok", "note": None}
  if min(n_bf, n_att) < max(n_folds, 2):
    out.update(status="skipped", note=(
        f"{n_bf} bona fide / {n_att} attack readable files: needs at least {max(n_folds, 2)} "
        f"of each for {n_folds}-fold cross-validation"))
    return out
  rng = np.random.default_rng(seed)
  if y.size > max_samples:  # a stratified subsample: the AUC estimate needs no more
    take = []
    for label in (0, 1):
      idx = np.flatnonzero(y == label)
      m = max(n_folds, round(max_samples * idx.size / y.size))
      take.append(rng.choice(idx, size=min(m, idx.size), replace=False))
    take = np.sort(np.concatenate(take))
    recs, y = [recs[i] for i in take], y[take]
    out["note"] = f"subsampled to {y.size} files (stratified)"
  cols = _feature_columns(recs, features)
  folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(np.zeros(y.size), y))

  # Design matrix; constant columns carry nothing and are dropped.
  blocks, constant = [], []
  for name, kind in features.items():
    col = cols[name]
    if kind == "cat":
      cats, inv = np.unique(col.astype(str), return_inverse=True)
      if cats.size < 2:
        constant.append(name)
        continue
      blocks.append(np.eye(cats.size, dtype=np.float64)[inv])
    else:
      finite = col[np.isfinite(col)]
      if np.unique(finite).size + (finite.size < col.size) < 2:
        constant.append(name)
        continue
      blocks.append(col[:, None])
  out["constant_features"] = constant
  if not blocks:
    out.update(auc=0.5, auc_folds=[],
               note="every metadata feature is constant: no shortcut possible")
    out["features"] = []
    return out
  x = np.concatenate(blocks, axis=1)
  fold_auc, oof = [], np.empty(y.size)
  # One OpenMP thread: on <= max_samples rows it is fast, and on a shared machine
  # OpenMP's spinning barriers make more threads many times slower.
  with threadpoolctl.threadpool_limits(1):
    for tr, te in folds:
      clf = HistGradientBoostingClassifier(
          max_iter=100, learning_rate=0.1, max_leaf_nodes=15, early_stopping=False,
          min_samples_leaf=min(20, max(2, tr.size // 20)), random_state=seed)
      clf.fit(x[tr], y[tr])
      p = clf.predict_proba(x[te])[:, 1]
      oof[te] = p
      fold_auc.append(float(roc_auc_score(y[te], p)))
  out.update(auc=float(np.mean(fold_auc)), auc_std=float(np.std(fold_auc)), auc_folds=fold_auc,
             auc_pooled=float(roc_auc_score(y, oof)), model="HistGradientBoostingClassifier")

  feats = []
  for name, kind in features.items():
    if name in constant:
      continue
    codes, _ = _codes(cols[name], kind)
    feats.append({
        "feature": name, "auc": _oof_target_encoding_auc(codes, y, folds),
        "bona_fide": _class_distribution(name, cols[name][y == 1]),
        "attack": _class_distribution(name, cols[name][y == 0])})
  feats.sort(key=lambda f: -f["auc"])
  out["features"] = feats
  out["storage"] = {"bona_fide": _storage_profile([r for r, l in zip(recs, y) if l == 1]),
                    "attack": _storage_profile([r for r, l in zip(recs, y) if l == 0])}
  return out


def shortcut_warning(split: str, what: str, score: dict, threshold: float) -> dict[str, Any]:
  feats = [f for f in score["features"] if f["auc"] >= 0.6][:4] or score["features"][:2]
  named = "; ".join(f"{f['feature']} (AUC {f['auc']:.2f}: bona fide {f['bona_fide']}; "
                    f"attack {f['attack']})" for f in feats)
  st = score.get("storage", {})
  msg = (f"Shortcut risk in split '{split}' ({what}): storage metadata alone predicts the "
         f"label with cross-validated ROC AUC {score['auc']:.3f} (threshold {threshold:g}). "
         f"Most separating: {named or 'an interaction of features'}. Storage: bona fide: "
         f"{st.get('bona_fide')}; attack: {st.get('attack')}.")
  return {"split": split, "comparison": what, "auc": score["auc"], "threshold": threshold,
          "features": [f["feature"] for f in feats], "feature_details": feats,
          "storage": st, "message": msg, "remedy": REMEDY}
