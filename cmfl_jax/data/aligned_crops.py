"""Aligning many files: photographs in, aligned PNG crops and a manifest out.

One implementation for every use: `python -m cmfl_jax.align` (datasets),
`data.align` (evaluation or training on raw-image datasets: files are aligned
once into a cache and the split points at the crops) and `predict --align`
(`align_image`). Per input, the manifest (JSONL) records the face box, the
five landmarks, the detection score, how many faces were found, the transform
and the output files, or the reason there is none; a rerun skips inputs the
manifest already has and whose outputs exist. Outputs are written to a
temporary name and renamed, so a half-written file never looks complete.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import threading
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from cmfl_jax.data import face_detection, file_cache

MANIFEST = "manifest.jsonl"
POLICIES = ("largest", "most_confident", "all", "skip_multiple")
MODES = ("align", "box")


@dataclasses.dataclass(frozen=True)
class AlignOptions:
  """How faces are cut: `mode` "align" (FFHQ-style similarity from the
  landmarks) or "box" (square MTCNN box + `margin` px); `policy` which faces."""

  mode: str = "align"
  policy: str = "largest"
  size: int = 224
  margin: float = 0.0
  max_outside: float = 0.02
  settings: face_detection.DetectorSettings = face_detection.DetectorSettings()
  max_upscale: float = 2.0  # a face enlarged more than this to `size` supports no verdict

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"align mode must be one of {MODES}, got {self.mode!r}")
    if self.policy not in POLICIES:
      raise ValueError(f"align policy must be one of {POLICIES}, got {self.policy!r}")
    if self.size < 16:
      raise ValueError(f"align size must be >= 16, got {self.size}")
    if not self.max_upscale > 0:
      raise ValueError(f"max_upscale must be > 0, got {self.max_upscale}")


def too_small(face: face_detection.Face, size: int, max_upscale: float) -> str | None:
  """"face too small (N px)" when the face (box side N) would have to be
  enlarged more than `max_upscale` times to reach `size` pixels: the pixels
  the detector would judge were never there; None otherwise."""
  upscale = size / face.source_side
  if upscale <= max_upscale:
    return None
  side = max(face.box[2] - face.box[0], face.box[3] - face.box[1])
  return f"face too small ({side:.0f} px, {upscale:.1f}x upscale)"


def align_image(path: str,
                options: AlignOptions) -> list[face_detection.Face] | face_detection.NoFace:
  """The faces of one file, or why there are none (never raises for a bad file)."""
  image = face_detection.load_rgb(path)
  if isinstance(image, face_detection.NoFace):
    return image
  return align_pixels(image, options)


def align_pixels(image: np.ndarray,
                 options: AlignOptions) -> list[face_detection.Face] | face_detection.NoFace:
  """The faces of decoded RGB pixels (an upload to the service), as for a file."""
  return face_detection.detect_and_align(image, options.settings, options.mode, options.policy,
                                         options.size, margin=options.margin,
                                         max_outside=options.max_outside)


def _face_record(face: face_detection.Face) -> dict[str, Any]:
  return {"box": [round(float(v), 2) for v in face.box],
          "landmarks": np.round(face.landmarks, 2).tolist(), "score": round(face.score, 4),
          "transform": np.round(face.transform, 6).tolist(), "outside": round(face.outside, 4),
          "framing": face.framing, "source_side": round(face.source_side, 1)}


def _write_png(crop: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
  Image.fromarray(crop).save(tmp, format="PNG")
  os.replace(tmp, path)


def output_names(stem: str, count: int, policy: str) -> list[str]:
  """`stem.png`, or `stem_<k>.png` per face for policy "all"."""
  if policy == "all":
    return [f"{stem}_{k}.png" for k in range(count)]
  return [f"{stem}.png"]


def align_one(source: str, stem: str, options: AlignOptions) -> dict[str, Any]:
  """Aligns `source` into `stem[_k].png`; returns its manifest record."""
  result = align_image(source, options)
  record: dict[str, Any] = {"input": source}
  if isinstance(result, face_detection.NoFace):
    return {**record, "reason": result.reason, "outputs": [], "faces_found": 0}
  small = [too_small(f, options.size, options.max_upscale) for f in result]
  kept = [f for f, why in zip(result, small) if why is None]
  found = {"faces_found": result[0].faces_found, "faces": [_face_record(f) for f in kept]}
  if not kept:
    return {**record, "reason": f"unsure: {small[0]}", "outputs": [], **found,
            "framing": result[0].framing, "faces": [_face_record(f) for f in result]}
  outputs = output_names(stem, len(kept), options.policy)
  for face, out in zip(kept, outputs):
    _write_png(face.crop, out)
  return {**record, "outputs": outputs, "framing": kept[0].framing, **found,
          **({"too_small": [w for w in small if w]} if len(kept) < len(result) else {})}


def read_manifest(path: str) -> dict[str, dict[str, Any]]:
  """input -> record of a manifest (a torn last line, from a kill, is ignored)."""
  records = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        records[record["input"]] = record
  return records


def _done(record: dict[str, Any] | None) -> bool:
  return record is not None and all(os.path.exists(p) for p in record["outputs"])


def align_many(jobs: Sequence[tuple[str, str]], options: AlignOptions, manifest_path: str,
               workers: int | None = None, progress: bool = True,
               on_record: Callable[[dict], None] | None = None) -> dict[str, dict[str, Any]]:
  """Aligns every (source, output stem) job, in parallel, appending to the
  manifest as results come in; inputs already in the manifest with their
  outputs present are skipped. Returns input -> record for every job."""
  known = read_manifest(manifest_path)
  todo = [(s, stem) for s, stem in jobs if not _done(known.get(s))]
  os.makedirs(os.path.dirname(manifest_path) or ".", exist_ok=True)
  lock = threading.Lock()
  from tqdm import tqdm
  with open(manifest_path, "a") as manifest, \
      tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="img", desc="align",
           disable=not progress, dynamic_ncols=True) as bar, \
      concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
    futures = [pool.submit(align_one, s, stem, options) for s, stem in todo]
    for future in concurrent.futures.as_completed(futures):
      record = future.result()
      with lock:
        manifest.write(json.dumps(record) + "\n")
        manifest.flush()
        known[record["input"]] = record
      if on_record is not None:
        on_record(record)
      bar.update(1)
  return {s: known[s] for s, _ in jobs}


def mirrored_jobs(sources: Iterable[str], root: str | None, out_dir: str) -> list[tuple[str, str]]:
  """(source, output stem) pairs mirroring `root`'s tree under `out_dir`
  (files outside `root`, or without a root, by their base name)."""
  jobs = []
  for s in sources:
    rel = os.path.relpath(s, root) if root and not os.path.relpath(s, root).startswith("..") \
        else os.path.basename(s)
    jobs.append((s, os.path.join(out_dir, os.path.splitext(rel)[0])))
  return jobs


def cache_jobs(sources: Iterable[str], cache_dir: str) -> list[tuple[str, str]]:
  """(source, stem) pairs in a cache mirroring absolute paths (`data.align`)."""
  return [(s, os.path.join(cache_dir, os.path.splitext(os.path.abspath(s).lstrip(os.sep))[0]))
          for s in sources]


def iter_outputs(records: Iterable[dict[str, Any]]) -> Iterable[tuple[dict, str | None]]:
  """(record, output) per produced crop, and (record, None) per input without one."""
  for record in records:
    if not record["outputs"]:
      yield record, None
    for out in record["outputs"]:
      yield record, out


def describe(records: Sequence[dict[str, Any]]) -> str:
  ok = sum(bool(r["outputs"]) for r in records)
  return f"{ok} of {len(records)} images gave a face, {len(records) - ok} did not"


def default_cache_dir() -> str:
  return os.fspath(file_cache.user_cache_dir() / "aligned")

