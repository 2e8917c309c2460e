"""Duplicates within and across splits: exact ones (the same bytes, sha1) and
near ones (perceptual hashes within a Hamming distance, found by a
sub-quadratic multi-index search), counted per split pair."""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cmfl_jax.data.auditing.splits import CLASS_NAMES, AuditSplit

# --------------------------------------------------------------------------------------
# Near-duplicate search
# --------------------------------------------------------------------------------------

_POP8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)
_MAX_TABLE_BITS = 22  # bucket tables of 2^22 entries (int64: 32 MiB each) at most


def _popcount(x: np.ndarray) -> np.ndarray:
  x = np.ascontiguousarray(x, np.uint64)
  if hasattr(np, "bitwise_count"):
    return np.bitwise_count(x).astype(np.int64)
  return _POP8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1).astype(np.int64)


def _band_widths(m: int) -> list[int]:
  return [64 // m + (1 if i < 64 % m else 0) for i in range(m)]


def _plan(n: int, t: int) -> tuple[int, int, float]:
  """(bands, radius, estimated seconds) of the cheapest multi-index search; bands=0 is
  brute force. Constants are rough per-element numpy costs."""
  best = (0, t, n * n / 2 * 3e-9)
  for m in range(3, 65):
    widths, r = _band_widths(m), t // m
    probes = [sum(math.comb(w, i) for i in range(r + 1)) for w in widths]
    cost = sum(n * p * 50e-9 + (1 << w) * 4e-9 + n * n * p / (1 << w) * 40e-9
               for p, w in zip(probes, widths))
    if cost < best[2]:
      best = (m, r, cost)
  return best


def hamming_pairs(hashes: np.ndarray, threshold: int, bands: int | None = None,
                  chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """All pairs i < j with popcount(h_i ^ h_j) <= threshold, without comparing all pairs.

  Multi-index hashing: cut the 64 bits into m bands; if two hashes differ in <= t bits,
  some band differs in <= t // m bits (pigeonhole). m = t + 1 is the plain 'some band
  equal' scheme; each band's items are bucketed by value and only items in buckets
  within that radius are compared, then verified. m is chosen by a cost model (or
  forced with `bands`; 0 = brute force). Returns (pairs (k, 2), distances (k,), info).
  """
  h = np.ascontiguousarray(hashes, np.uint64).ravel()
  n, t = h.size, int(threshold)
  if bands is None:
    m, r, est = _plan(n, t)
  else:
    m, r, est = bands, (t // bands if bands else t), float("nan")
    if m and (m < 3 or m > 64):
      raise ValueError("bands must be 0 (brute force) or 3..64")
  info: dict[str, Any] = {"n": n, "method": "brute force" if m == 0 else "multi-index",
                          "bands": m, "radius": r, "candidates": 0}
  found_i, found_j = [], []
  if n < 2:
    pass
  elif m == 0:
    step = max(1, chunk // n)
    for a in range(0, n, step):
      d = _popcount(h[a:a + step, None] ^ h[None, :])
      ii, jj = np.nonzero(d <= t)
      ii += a
      keep = jj > ii
      found_i.append(ii[keep])
      found_j.append(jj[keep])
      info["candidates"] += int(d.size)
  else:
    shift = 64
    for w in _band_widths(m):
      shift -= w
      v = ((h >> np.uint64(shift)) & np.uint64((1 << w) - 1)).astype(np.int64)
      order = np.argsort(v, kind="stable")
      counts = np.bincount(v, minlength=1 << w)
      starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
      for bits in itertools.chain.from_iterable(
          itertools.combinations(range(w), k) for k in range(r + 1)):
        q = v ^ sum(1 << b for b in bits)
        c = counts[q]
        nz = np.flatnonzero(c)
        if not nz.size:
          continue
        cum = np.cumsum(c[nz])
        lo = 0
        while lo < nz.size:  # bounded memory: at most ~chunk candidates at a time
          hi = int(np.searchsorted(cum, (cum[lo - 1] if lo else 0) + chunk, side="right"))
          hi = max(hi, lo + 1)
          sel = nz[lo:hi]
          cs = c[sel]
          ii = np.repeat(sel, cs)
          base = np.repeat(starts[q[sel]] - (np.cumsum(cs) - cs), cs)
          jj = order[base + np.arange(ii.size)]
          keep = ii < jj
          ii, jj = ii[keep], jj[keep]
          info["candidates"] += int(ii.size)
          ok = _popcount(h[ii] ^ h[jj]) <= t
          found_i.append(ii[ok])
          found_j.append(jj[ok])
          lo = hi
  if found_i:
    key = np.unique(np.concatenate(found_i).astype(np.int64) * n + np.concatenate(found_j))
    pairs = np.stack([key // n, key % n], axis=1)
  else:
    pairs = np.zeros((0, 2), np.int64)
  dist = _popcount(h[pairs[:, 0]] ^ h[pairs[:, 1]]) if pairs.size else np.zeros(0, np.int64)
  info["pairs"] = int(pairs.shape[0])
  info["estimated_seconds"] = est
  return pairs, dist, info

# --------------------------------------------------------------------------------------
# Duplicates across entries
# --------------------------------------------------------------------------------------

class Entries:
  """Every (split, index) with its absolute path, label, generator, record."""

  def __init__(self, splits: Mapping[str, AuditSplit], abs_paths: Mapping[str, list[str]],
               records: Mapping[str, dict]):
    self.names = list(splits)
    self.split, self.path, self.label, self.gen = [], [], [], []
    for s_i, (name, sp) in enumerate(splits.items()):
      self.split += [s_i] * sp.paths.size
      self.path += abs_paths[name]
      self.label += sp.labels.tolist()
      self.gen += sp.generators.tolist()
    self.split = np.asarray(self.split, np.int64)
    self.label = np.asarray(self.label, np.int64)
    self.records = records

  def pair_key(self, a: int, b: int) -> str:
    a, b = sorted((a, b))
    return f"{self.names[a]}~{self.names[b]}"

  def describe(self, e: int) -> dict[str, Any]:
    return {"split": self.names[self.split[e]], "path": self.path[e],
            "label": CLASS_NAMES[int(self.label[e])], "generator": self.gen[e]}


def _pair_counts(groups: Sequence[tuple[Counter, Counter]], entries: Entries) -> dict[str, int]:
  """Entry pairs per split pair for group pairs (a, b) of split counters; (c, None) means
  all pairs within c."""
  out: Counter = Counter()
  for ca, cb in groups:
    if cb is None:
      for s, n in ca.items():
        out[entries.pair_key(s, s)] += n * (n - 1) // 2
      for s, u in itertools.combinations(sorted(ca), 2):
        out[entries.pair_key(s, u)] += ca[s] * ca[u]
    else:
      for s, n in ca.items():
        for u, k in cb.items():
          out[entries.pair_key(s, u)] += n * k
  return dict(sorted((k, v) for k, v in out.items() if v))


def exact_duplicates(entries: Entries,
                      max_listed: int) -> tuple[dict[str, Any], dict[str, list[int]]]:
  by_sha: dict[str, list[int]] = defaultdict(list)
  for e, p in enumerate(entries.path):
    sha = entries.records[p].get("sha1")
    if sha:
      by_sha[sha].append(e)
  groups = {s: es for s, es in by_sha.items() if len(es) > 1}
  counters = [(Counter(entries.split[es].tolist()), None) for es in groups.values()]
  conflicts = [s for s, es in groups.items() if len(set(entries.label[es].tolist())) > 1]
  cross = [s for s, es in groups.items() if len(set(entries.split[es].tolist())) > 1]
  listed = sorted(groups, key=lambda s: (s not in cross, s not in conflicts, s))[:max_listed]
  result = {
      "groups": len(groups), "entries_in_groups": sum(len(es) for es in groups.values()),
      "cross_split_groups": len(cross), "label_conflict_groups": len(conflicts),
      "pairs_by_split_pair": _pair_counts(counters, entries),
      "listed": [{"sha1": s, "same_path": len({entries.path[e] for e in groups[s]}) == 1,
                  "entries": [entries.describe(e) for e in groups[s][:20]]} for s in listed],
  }
  return result, by_sha


def near_duplicates(entries: Entries, by_sha: Mapping[str, list[int]], hamming: int,
                     max_listed: int) -> dict[str, Any]:
  reps, hashes = [], []
  for sha, es in by_sha.items():
    rec = entries.records[entries.path[es[0]]]
    if rec.get("ok") and rec.get("phash"):
      reps.append(es)
      hashes.append(int(rec["phash"], 16))
  t0 = time.perf_counter()
  pairs, dist, info = hamming_pairs(np.asarray(hashes, np.uint64), hamming)
  info["seconds"] = time.perf_counter() - t0
  counters, rows, conflicts = [], [], 0
  for (a, b), d in zip(pairs.tolist(), dist.tolist()):
    ea, eb = reps[a], reps[b]
    counters.append((Counter(entries.split[ea].tolist()), Counter(entries.split[eb].tolist())))
    if len(set(entries.label[ea + eb].tolist())) > 1:
      conflicts += 1
    if len(rows) < 4 * max_listed:
      for x, y in itertools.product(ea[:5], eb[:5]):
        rows.append((entries.split[x] == entries.split[y], d, x, y))
  rows.sort(key=lambda r: (r[0], r[1]))  # cross-split first, closest first
  by_pair = _pair_counts(counters, entries)
  return {
      "hamming_threshold": hamming, "content_pairs": int(pairs.shape[0]),
      "pairs_total": int(sum(by_pair.values())), "pairs_by_split_pair": by_pair,
      "label_conflict_pairs": conflicts,
      "listed": [{"hamming": int(d), "a": entries.describe(x), "b": entries.describe(y)}
                 for _, d, x, y in rows[:max_listed]],
      "search": info,
      "note": "exact duplicates are reported separately and not repeated here",
  }
