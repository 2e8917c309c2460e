"""The data audit's result and its reports: `run_audit` runs every check on
the splits (storage summaries, shortcut scores, duplicates, subject overlap,
unreadable files) and keeps the result, reused while the splits, every file's
size and mtime and the parameters stay the same; `summary_lines` (a training
log), `write_audit` (audit.json and audit.md) report it."""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cmfl_jax.data import file_cache
from cmfl_jax.data.auditing import duplicates, metadata, shortcut
from cmfl_jax.data.auditing.splits import CLASS_NAMES, AuditSplit

log = logging.getLogger(__name__)

# Bump when what run_audit computes from the records changes: stored results are recomputed.
RESULT_VERSION = 1


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------

def _count(values: Iterable[Any]) -> dict[str, int]:
  c = Counter(str(v) for v in values)
  return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _dist(values: Sequence[float]) -> dict[str, float] | None:
  if not len(values):
    return None
  a = np.asarray(values, np.float64)
  return {"min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())}


def _summarise(recs: Sequence[dict]) -> dict[str, Any]:
  ok = [r for r in recs if r.get("ok")]
  out: dict[str, Any] = {"n": len(recs), "unreadable": len(recs) - len(ok)}
  if not ok:
    return out
  jp = [r for r in ok if r["format"] == "JPEG"]
  quality = Counter(r["jpeg_quality"] for r in jp if r["jpeg_quality"] is not None)
  out.update({
      "formats": _count(r["format"] for r in ok),
      "jpeg_quality": {str(q): n for q, n in sorted(quality.items())},
      "jpeg_tables": _count(r["jpeg_table"] for r in jp),
      "subsampling": _count(r["subsampling"] for r in jp),
      "progressive": _count("progressive" if r["progressive"] else "baseline" for r in jp),
      "modes": _count(r["mode"] for r in ok),
      "bit_depth": _count(r["bit_depth"] for r in ok),
      "width": _dist([r["width"] for r in ok]),
      "height": _dist([r["height"] for r in ok]),
      "file_bytes": _dist([r["bytes"] for r in ok]),
      "bytes_per_pixel_median": float(np.median([r["bytes_per_pixel"] for r in ok])),
      "exif_fraction": float(np.mean([r["exif"] for r in ok])),
      "icc_fraction": float(np.mean([r["icc"] for r in ok])),
      "dpi_fraction": float(np.mean([r["dpi"] for r in ok])),
  })
  return out


def _split_summary(split: AuditSplit, recs: list[dict]) -> dict[str, Any]:
  out: dict[str, Any] = {"n": len(recs), "n_bona_fide": int((split.labels == 1).sum()),
                         "n_attack": int((split.labels == 0).sum()),
                         "unreadable": sum(not r.get("ok") for r in recs), "classes": {},
                         "generators": {}}
  for label in (1, 0):
    idx = np.flatnonzero(split.labels == label)
    if idx.size:
      out["classes"][CLASS_NAMES[label]] = _summarise([recs[i] for i in idx])
  for gen in dict.fromkeys(split.generators.tolist()):
    idx = np.flatnonzero(split.generators == gen)
    out["generators"][gen] = _summarise([recs[i] for i in idx])
  return out

# --------------------------------------------------------------------------------------
# Subject overlap
# --------------------------------------------------------------------------------------

_NO_SUBJECT = {"", "none", "nan", "null"}


def _subject_overlap(splits: Mapping[str, AuditSplit], max_listed: int) -> dict[str, Any]:
  sets = {}
  for name, sp in splits.items():
    if sp.subjects is not None:
      subj = [str(s) for s in sp.subjects.tolist()]
      sets[name] = (subj, {s for s in subj if s.strip().lower() not in _NO_SUBJECT})
  out: dict[str, Any] = {"splits_with_subjects": list(sets), "pairs": {}}
  for a, b in itertools.combinations(sets, 2):
    shared = sets[a][1] & sets[b][1]
    out["pairs"][f"{a}~{b}"] = {
        "subjects": [len(sets[a][1]), len(sets[b][1])], "shared": len(shared),
        "images_affected": [sum(s in shared for s in sets[a][0]),
                            sum(s in shared for s in sets[b][0])],
        "examples": sorted(shared)[:max_listed]}
  return out

# --------------------------------------------------------------------------------------
# The audit
# --------------------------------------------------------------------------------------

def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  return x


def run_audit(splits: Mapping[str, AuditSplit] | Iterable[AuditSplit],
              cache_path: str | os.PathLike | None = None, *,
              train_splits: Sequence[str] | None = None, shortcut_threshold: float = 0.75,
              hamming: int = 8, workers: int | None = None, n_folds: int = 5, seed: int = 0,
              max_listed: int = 200, shortcut_max_samples: int = 20000,
              shortcut_features: Sequence[str] | None = None) -> dict[str, Any]:
  """Audit splits for storage shortcuts and leakage; returns a JSON-serialisable dict.

  cache_path: the per-file metadata cache (None: default_cache_path(); ':memory:' for
  none). train_splits: splits to score for shortcuts (None: those whose name contains
  'train', else all). A warning is raised where the cross-validated AUC of the
  metadata-only classifier exceeds shortcut_threshold. hamming: near-duplicate
  threshold in bits of the 64-bit pHash. shortcut_features: subset of FEATURES for
  the classifier (default all). max_listed caps the listed pairs, not the counts.
  """
  t_start = time.perf_counter()
  if not isinstance(splits, Mapping):
    splits = {s.name: s for s in splits}
  splits = dict(splits)
  if train_splits is None:
    train_splits = [s for s in splits if "train" in s.lower()] or list(splits)
  unknown = [s for s in train_splits if s not in splits]
  if unknown:
    raise ValueError(f"train_splits {unknown} not among splits {list(splits)}")
  timings: dict[str, float] = {}
  abs_paths = {name: [os.path.abspath(p) for p in sp.paths.tolist()] for name, sp in splits.items()}
  uniq = list(dict.fromkeys(itertools.chain.from_iterable(abs_paths.values())))
  _, keys, problems = file_cache.stat_keys(uniq)
  stat_s = time.perf_counter() - t_start
  params = {"train_splits": list(train_splits), "shortcut_threshold": shortcut_threshold,
            "hamming": hamming, "n_folds": n_folds, "seed": seed, "max_listed": max_listed,
            "shortcut_max_samples": shortcut_max_samples,
            "shortcut_features": list(shortcut_features or shortcut.FEATURES)}
  digest = _input_digest(splits, keys, problems, params)
  with file_cache.FileCache(cache_path, "results", RESULT_VERSION) as results:
    reused = results.get_many({digest: (len(uniq), 0)}).get(digest)
  if reused is not None:
    return _reuse(reused, len(keys), stat_s, time.perf_counter() - t_start)
  records, read_stats = metadata.read_records_after_stat(uniq, keys, problems, cache_path,
                                                         workers, stat_s)
  timings.update(read_stats.pop("seconds"))
  log.info("audit: %d files, %d from cache, %d read, %d unreadable", read_stats["unique_files"],
           read_stats["from_cache"], read_stats["read"], read_stats["unreadable"])

  t0 = time.perf_counter()
  split_recs = {name: [records[p] for p in abs_paths[name]] for name in splits}
  summaries = {name: _split_summary(sp, split_recs[name]) for name, sp in splits.items()}
  timings["summaries"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  scores, warnings_ = [], []
  for name in train_splits:
    sp, recs = splits[name], split_recs[name]
    score = shortcut.shortcut_score(recs, sp.labels, n_folds=n_folds, seed=seed,
                                    max_samples=shortcut_max_samples, features=shortcut_features)
    score.update(split=name, comparison="bona fide vs attack")
    scores.append(score)
    class_warned = score["status"] == "ok" and score["auc"] > shortcut_threshold
    if class_warned:
      warnings_.append(shortcut.shortcut_warning(name, "bona fide vs attack", score,
                                                 shortcut_threshold))
    gens = [g for g in dict.fromkeys(sp.generators[sp.labels == 0].tolist())]
    if len(gens) > 1:  # one generator stored differently hides inside the attack class
      for g in gens:
        idx = np.flatnonzero((sp.labels == 1) | ((sp.labels == 0) & (sp.generators == g)))
        gs = shortcut.shortcut_score([recs[i] for i in idx], sp.labels[idx], n_folds=n_folds,
                                     seed=seed, max_samples=shortcut_max_samples,
                                     features=shortcut_features)
        gs.update(split=name, comparison=f"bona fide vs {g}")
        scores.append(gs)
        if not class_warned and gs["status"] == "ok" and gs["auc"] > shortcut_threshold:
          warnings_.append(shortcut.shortcut_warning(name, f"bona fide vs {g}", gs,
                                                     shortcut_threshold))
  timings["shortcut"] = time.perf_counter() - t0

  entries = duplicates.Entries(splits, abs_paths, records)
  t0 = time.perf_counter()
  exact, by_sha = duplicates.exact_duplicates(entries, max_listed)
  timings["exact_duplicates"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  near = duplicates.near_duplicates(entries, by_sha, hamming, max_listed)
  timings["near_duplicates"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  subjects = _subject_overlap(splits, max_listed)
  timings["subject_overlap"] = time.perf_counter() - t0

  where: dict[str, list[str]] = defaultdict(list)
  for name in splits:
    for p in dict.fromkeys(abs_paths[name]):
      where[p].append(name)
  unreadable = [{"path": p, "splits": where[p], "reason": r.get("reason")}
                for p, r in records.items() if not r.get("ok")]

  findings = [{"kind": "shortcut", "message": w["message"]} for w in warnings_]
  for kind, res in (("exact_duplicates", exact), ("near_duplicates", near)):
    cross = {k: v for k, v in res["pairs_by_split_pair"].items()
             if v and k.split("~")[0] != k.split("~")[1]}
    if cross:
      findings.append({"kind": kind, "message": f"{kind.replace('_', ' ')} across splits: " +
                       ", ".join(f"{k} {v} pairs" for k, v in cross.items())})
  shared = {k: v["shared"] for k, v in subjects["pairs"].items() if v["shared"]}
  if shared:
    findings.append({"kind": "subject_overlap", "message": "subjects shared across splits: " +
                     ", ".join(f"{k} {v}" for k, v in shared.items())})
  if unreadable:
    findings.append({"kind": "unreadable", "message": f"{len(unreadable)} unreadable files"})
  timings["total"] = time.perf_counter() - t_start

  result = {
      "audit_version": metadata.CACHE_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "config": {"splits": list(splits), "train_splits": list(train_splits),
                 "shortcut_threshold": shortcut_threshold, "hamming": hamming,
                 "n_folds": n_folds, "seed": seed, "cache_path": read_stats["cache_path"],
                 "shortcut_features": list(shortcut_features or shortcut.FEATURES),
                 "workers": read_stats["workers"]},
      "files": {"entries": len(entries.path), **{k: v for k, v in read_stats.items()
                                                 if k not in ("cache_path", "workers")}},
      "splits": summaries,
      "shortcut": {"threshold": shortcut_threshold, "scores": scores, "warnings": warnings_},
      "exact_duplicates": exact, "near_duplicates": near, "subject_overlap": subjects,
      "unreadable": unreadable, "findings": findings, "timings": timings, "reused_from": None,
  }
  result = _jsonable(result)
  with file_cache.FileCache(cache_path, "results", RESULT_VERSION) as results:
    results.put_many([(digest, len(uniq), 0, result)])
  return result


def _input_digest(splits: Mapping[str, AuditSplit], keys: Mapping[str, file_cache.Key],
                  problems: Mapping[str, str], params: Mapping[str, Any]) -> str:
  """Everything an audit's result depends on: the splits as given, each file's (size,
  mtime_ns) or problem, the parameters and the versions of the code."""
  try:
    from importlib.metadata import version
    sklearn_version = version("scikit-learn")
  except Exception:  # noqa: BLE001 - unknown version: still a stable key
    sklearn_version = None
  h = hashlib.sha256(json.dumps([metadata.CACHE_VERSION, RESULT_VERSION, sklearn_version, params],
                                sort_keys=True).encode())
  for name, sp in splits.items():
    subjects = None if sp.subjects is None else [str(x) for x in sp.subjects.tolist()]
    h.update(json.dumps([name, sp.paths.tolist(), sp.labels.tolist(), sp.generators.tolist(),
                         subjects]).encode())
  h.update(json.dumps([list(keys.items()), list(problems.items())]).encode())
  return f"audit:{h.hexdigest()}"


def _reuse(result: dict[str, Any], n_cached: int, stat_s: float, total_s: float) -> dict[str, Any]:
  """A stored result for identical inputs: no file is opened, nothing recomputed."""
  log.info("audit: %d files unchanged since the audit of %s: its result reused",
           result["files"]["unique_files"], result["created"])
  result["reused_from"] = result["created"]
  result["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  result["files"].update(from_cache=n_cached, read=0)
  result["timings"] = {"stat": stat_s, "result_lookup": total_s - stat_s, "total": total_s}
  return result

# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------

def _top(counts: Mapping[str, int] | None, k: int = 3, prefix: str = "") -> str:
  if not counts:
    return "-"
  total = sum(counts.values())
  items = sorted(counts.items(), key=lambda kv: -kv[1])[:k]
  s = ", ".join(f"{prefix}{v} {100 * n / total:.0f}%" for v, n in items)
  return s + (", ..." if len(counts) > k else "")


def _size(s: Mapping[str, Any]) -> str:
  w, h = s.get("width"), s.get("height")
  if not w:
    return "-"
  return (f"{w['median']:g}x{h['median']:g} ({w['min']:g}x{h['min']:g}-"
          f"{w['max']:g}x{h['max']:g})")


def summary_lines(result: Mapping[str, Any]) -> list[str]:
  """A few lines for a training log: files, per-split storage, findings."""
  f, t = result["files"], result["timings"]
  lines = [f"data audit: {len(result['splits'])} splits, {f['entries']} entries, "
           f"{f['unique_files']} files ({f['read']} read, {f['from_cache']} cached, "
           f"{f['unreadable']} unreadable) in {t['total']:.1f}s"]
  for name, s in result["splits"].items():
    parts = []
    for cls, c in s["classes"].items():
      q = f"; JPEG {_top(c.get('jpeg_quality'), 2, 'q')}" if c.get("jpeg_quality") else ""
      parts.append(f"{cls.replace('_', ' ')} {c['n']} [{_top(c.get('formats'), 2)}{q}]")
    lines.append(f"  {name}: " + "; ".join(parts))
  for sc in result["shortcut"]["scores"]:
    if sc["status"] != "ok":
      lines.append(f"  shortcut {sc['split']} ({sc['comparison']}): skipped - {sc['note']}")
    else:
      flag = "WARNING" if sc["auc"] > result["shortcut"]["threshold"] else "ok"
      lines.append(f"  shortcut {sc['split']} ({sc['comparison']}): metadata-only AUC "
                   f"{sc['auc']:.3f} [{flag}]")
  for w in result["shortcut"]["warnings"]:
    lines.append(f"  WARNING {w['message']} Remedy: {w['remedy']}")
  ex, nd = result["exact_duplicates"], result["near_duplicates"]
  lines.append(f"  exact duplicates: {ex['groups']} groups; pairs by split pair "
               f"{ex['pairs_by_split_pair'] or '{}'}")
  lines.append(f"  near duplicates (<= {nd['hamming_threshold']} bits): pairs by split pair "
               f"{nd['pairs_by_split_pair'] or '{}'}")
  for k, v in result["subject_overlap"]["pairs"].items():
    lines.append(f"  subjects {k}: {v['shared']} shared")
  for u in result["unreadable"][:5]:
    lines.append(f"  unreadable: {u['path']}: {u['reason']}")
  if len(result["unreadable"]) > 5:
    lines.append(f"  ... {len(result['unreadable']) - 5} more unreadable")
  return lines


def _md_escape(s: Any) -> str:
  return str(s).replace("|", "\\|").replace("\n", " ")


def _markdown(result: Mapping[str, Any]) -> str:
  out = ["# Data audit", "", f"Created {result['created']}.", ""]
  f = result["files"]
  out += [f"{f['entries']} entries, {f['unique_files']} files: {f['read']} read, "
          f"{f['from_cache']} from cache, {f['unreadable']} unreadable.", ""]
  out += ["## Findings", ""]
  out += [f"- **{x['kind']}**: {_md_escape(x['message'])}"
          for x in result["findings"]] or ["- none"]
  if result["shortcut"]["warnings"]:
    out += ["", f"**Remedy for shortcuts:** {shortcut.REMEDY}"]
  out += ["", "## Storage per split", ""]
  cols = ["group", "n", "unreadable", "formats", "JPEG quality", "subsampling", "progressive",
          "modes", "size (median, range)", "bytes/px", "EXIF", "ICC"]
  for name, s in result["splits"].items():
    out += [f"### {name}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    groups = [(k.replace("_", " "), v) for k, v in s["classes"].items()]
    groups += [(f"generator {k}", v) for k, v in s["generators"].items()]
    for label, c in groups:
      row = [label, c["n"], c["unreadable"], _top(c.get("formats")),
             _top(c.get("jpeg_quality"), 3, "q"), _top(c.get("subsampling")),
             _top(c.get("progressive")), _top(c.get("modes")), _size(c),
             f"{c['bytes_per_pixel_median']:.3g}" if "bytes_per_pixel_median" in c else "-",
             f"{100 * c['exif_fraction']:.0f}%" if "exif_fraction" in c else "-",
             f"{100 * c['icc_fraction']:.0f}%" if "icc_fraction" in c else "-"]
      out.append("| " + " | ".join(_md_escape(v) for v in row) + " |")
    out.append("")
  out += ["## Shortcut scores (metadata only, cross-validated ROC AUC)", "",
          f"Warning above {result['shortcut']['threshold']:g}.", "",
          "| split | comparison | n | AUC | top features | note |", "|---|---|---|---|---|---|"]
  for sc in result["shortcut"]["scores"]:
    auc = "-" if sc["auc"] is None else f"{sc['auc']:.3f}"
    top = ", ".join(f"{x['feature']} {x['auc']:.2f}" for x in sc.get("features", [])[:3])
    out.append(f"| {sc['split']} | {sc['comparison']} | {sc['n']} | {auc} | {top or '-'} | "
               f"{_md_escape(sc.get('note') or '')} |")
  for w in result["shortcut"]["warnings"]:
    out += ["", f"**{_md_escape(w['message'])}**", "", "| feature | AUC | bona fide | attack |",
            "|---|---|---|---|"]
    out += [f"| {x['feature']} | {x['auc']:.2f} | {_md_escape(x['bona_fide'])} | "
            f"{_md_escape(x['attack'])} |" for x in w["feature_details"]]
  ex, nd = result["exact_duplicates"], result["near_duplicates"]
  out += ["", "## Exact duplicates (sha1)", "",
          f"{ex['groups']} groups, {ex['cross_split_groups']} across splits, "
          f"{ex['label_conflict_groups']} with conflicting labels. Pairs by split pair: "
          f"{ex['pairs_by_split_pair'] or 'none'}.", ""]
  for g in ex["listed"][:50]:
    out.append(f"- `{g['sha1'][:12]}`: " + "; ".join(
        f"{e['split']} {e['label']} `{_md_escape(e['path'])}`" for e in g["entries"][:6]))
  out += ["", f"## Near duplicates (pHash, <= {nd['hamming_threshold']} of 64 bits)", "",
          f"{nd['content_pairs']} content pairs ({nd['search']['method']}, "
          f"{nd['search']['candidates']} candidates checked). Pairs by split pair: "
          f"{nd['pairs_by_split_pair'] or 'none'}.", ""]
  for p in nd["listed"][:50]:
    out.append(f"- {p['hamming']} bits: {p['a']['split']} `{_md_escape(p['a']['path'])}` ~ "
               f"{p['b']['split']} `{_md_escape(p['b']['path'])}`")
  out += ["", "## Subject overlap", ""]
  if not result["subject_overlap"]["pairs"]:
    out.append("No pair of splits has subject ids.")
  for k, v in result["subject_overlap"]["pairs"].items():
    out.append(f"- {k}: {v['shared']} shared subjects (images affected {v['images_affected']})"
               + (f", e.g. {', '.join(map(str, v['examples'][:10]))}" if v["examples"] else ""))
  out += ["", "## Unreadable files", ""]
  out += [f"- `{_md_escape(u['path'])}` ({', '.join(u['splits'])}): {_md_escape(u['reason'])}"
          for u in result["unreadable"][:500]] or ["none"]
  if len(result["unreadable"]) > 500:
    out.append(f"- ... {len(result['unreadable']) - 500} more in audit.json")
  out += ["", "## Timings (s)", "",
          ", ".join(f"{k} {v:.2f}" for k, v in result["timings"].items()), ""]
  return "\n".join(out)


def write_audit(result: Mapping[str, Any], out_dir: str) -> tuple[str, str]:
  """Writes audit.json (everything) and audit.md (for people) through
  tf.io.gfile (workdirs may be gs://); returns their paths."""
  import tensorflow as tf  # only here: the audit itself needs no TF
  tf.io.gfile.makedirs(out_dir)
  texts = {"audit.json": json.dumps(result, indent=1, allow_nan=False) + "\n",
           "audit.md": _markdown(result)}
  for name, text in texts.items():
    with tf.io.gfile.GFile(f"{out_dir}/{name}", "w") as f:
      f.write(text)
  return f"{out_dir}/audit.json", f"{out_dir}/audit.md"
