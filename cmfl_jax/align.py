"""Faces from raw photographs: a folder (or protocol) of photos becomes an
aligned, trainable dataset.

  python -m cmfl_jax.align INPUT... --output=DIR [--mode=align|box] [--policy=largest]
      [--size=224] [--margin=0] [--data_root=ROOT] [--min_face_size=20] [--workers=N]

INPUTs are image files, folders (their trees are mirrored under DIR/data/) or
official protocol CSVs (`subject,filename,attack_type`, filenames relative to
--data_root): for each CSV the same protocol is written to
DIR/protocols/<name>.csv pointing at the aligned files, ready for
`--config.data.source=csv --config.data.data_root=DIR/data
--config.data.protocol_dir=DIR/protocols`. DIR/manifest.jsonl records every
input (box, five landmarks, score, faces found, transform, outputs) or the
reason it has no face (none found, below threshold, too small, unreadable,
corrupt, too large, several faces with --policy=skip_multiple); those are
also listed at the end and dropped from the written protocols. A rerun
resumes. Needs the `align` extra (`pip install -e ".[align]"`).
"""

from __future__ import annotations

import csv
import os
import sys
from typing import Sequence

from absl import app, flags

from cmfl_jax import backend
from cmfl_jax import config as config_lib

FLAGS = flags.FLAGS


def _options():
  from cmfl_jax.data import aligned_crops, face_detection
  return aligned_crops.AlignOptions(
      FLAGS.mode, FLAGS.policy, FLAGS.size, FLAGS.margin, FLAGS.max_outside,
      face_detection.DetectorSettings(min_face_size=FLAGS.min_face_size), FLAGS.max_upscale)


def run(inputs: Sequence[str], output: str, options, data_root: str | None = None,
        workers: int | None = None, progress: bool = True) -> dict:
  """Aligns every input; returns {"records": [...], "protocols": {name: path}}."""
  from cmfl_jax.data import aligned_crops, readers
  data_dir = os.path.join(output, "data")
  jobs, protocols = [], {}
  for item in inputs:
    if item.lower().endswith(".csv"):
      if not data_root:
        raise ValueError(f"{item}: a protocol CSV needs --data_root")
      split = readers.read_protocol_csv(item, data_root)
      protocols[item] = split
      jobs += aligned_crops.mirrored_jobs(split.paths, data_root, data_dir)
    elif os.path.isdir(item):
      jobs += aligned_crops.mirrored_jobs(readers.collect_image_paths([item]), item,
                                          os.path.join(data_dir, os.path.basename(
                                              os.path.normpath(item))))
    else:
      jobs += aligned_crops.mirrored_jobs([item], None, data_dir)
  jobs = list(dict.fromkeys(jobs))
  records = aligned_crops.align_many(jobs, options, os.path.join(output, aligned_crops.MANIFEST),
                                     workers, progress)
  written = {}
  for csv_path, split in protocols.items():
    target = os.path.join(output, "protocols", os.path.basename(csv_path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(csv_path, newline="") as f:
      rows = list(csv.reader(f))[1:]
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    with open(target + ".tmp", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(readers.PROTOCOL_HEADER)
      for row, path in zip(rows, split.paths):
        for out in records[path]["outputs"]:
          w.writerow([row[0], os.path.relpath(out, data_dir), row[2]])
    os.replace(target + ".tmp", target)
    written[csv_path] = target
  return {"records": list(records.values()), "protocols": written}


def main(argv: Sequence[str]) -> int:
  inputs = argv[1:]
  if not inputs:
    print("error: give image files, folders or protocol CSVs to align", file=sys.stderr)
    return config_lib.USAGE_ERROR
  try:
    options = _options()
    result = run(inputs, FLAGS.output, options, FLAGS.data_root, FLAGS.workers)
  except (ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return config_lib.USAGE_ERROR if isinstance(e, ValueError) else 1
  from cmfl_jax.data import aligned_crops
  records = result["records"]
  for record in records:
    if not record["outputs"]:
      print(f"no face: {record['input']}: {record['reason']}", file=sys.stderr)
  print(f"{aligned_crops.describe(records)}; crops under {os.path.join(FLAGS.output, 'data')}, "
        f"manifest {os.path.join(FLAGS.output, aligned_crops.MANIFEST)}")
  for source, target in result["protocols"].items():
    print(f"protocol {source} -> {target}")
  return 0


def define_flags() -> None:
  flags.DEFINE_string("output", None, "Output directory (data/, protocols/, manifest.jsonl).",
                      required=True)
  flags.DEFINE_enum("mode", "align", ["align", "box"],
                    "align: similarity from the landmarks (FFHQ framing); box: square MTCNN box.")
  flags.DEFINE_enum("policy", "largest", ["largest", "most_confident", "all", "skip_multiple"],
                    "Which faces of a photograph are kept.")
  flags.DEFINE_integer("size", 224, "Output crop size (pixels).")
  flags.DEFINE_float("margin", 0.0, "box mode: margin in output pixels.")
  flags.DEFINE_float("max_outside", 0.02, "Faces whose crop lies more than this fraction "
                     "outside the photograph are cut as the largest square inside it where "
                     "the face fills the frame (framing 'tight'), else dropped.")
  flags.DEFINE_float("max_upscale", 2.0, "Faces that would be enlarged more than this to "
                     "--size get no crop ('unsure: face too small (N px)').")
  flags.DEFINE_float("min_face_size", 20.0, "Smallest face (pixels) MTCNN looks for.")
  flags.DEFINE_string("data_root", None, "For protocol CSV inputs: their data root.")
  flags.DEFINE_integer("workers", None, "Parallel images (default: all cores).")


if __name__ == "__main__":
  backend.reexec_with_tuned_malloc()
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=config_lib.parse_flags)
