"""Writes the embedded benchmark to disk as PNG files plus official-format
protocol CSVs, so other tools (including the official PyTorch code) can use it.

  python -m cmfl_jax.tools.export_benchmark --output=DIR [--synthetic_config=64]

Layout: DIR/data/<source>/<split>/NNNNNN.png and
DIR/protocols/<family>/{train,dev,eval}.csv (real + that family; header
`subject,filename,attack_type`, attack_type = family name, empty for bona fide),
plus DIR/protocols/<family>/eval_real2.csv (the unseen camera + that family).
Use with `--config.data.source=csv --config.data.data_root=DIR/data
--config.data.protocol_dir=DIR/protocols/<family>`.
"""

from __future__ import annotations

import csv
import os

import numpy as np
from absl import app, flags
from PIL import Image

from cmfl_jax.data import synthetic
from cmfl_jax.data.synthetic import builder as synthetic_builder

FLAGS = flags.FLAGS

def export(builder, output: str) -> dict[str, int]:
  """Writes every split; returns the number of images per split."""
  counts = {}
  rows: dict[str, list] = {}
  for split in builder.info.splits:
    source, part = split.rsplit("_", 1)
    for ex in builder.as_data_source(split=split):
      name = ex["filename"].decode() if isinstance(ex["filename"], bytes) else ex["filename"]
      path = os.path.join(output, "data", name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(np.asarray(ex["image"])).save(path)
      rows.setdefault(split, []).append((os.path.splitext(os.path.basename(name))[0], name,
                                         "" if source in synthetic.REAL_SOURCES else source))
    counts[split] = len(rows[split])
  for fam in synthetic.FAMILIES:
    proto = os.path.join(output, "protocols", fam)
    os.makedirs(proto, exist_ok=True)
    sets = {part: [f"real_{part}", f"{fam}_{part}"] for part in synthetic.SPLITS}
    sets["eval_real2"] = ["real2_eval", f"{fam}_eval"]
    for part, splits in sets.items():
      with open(os.path.join(proto, f"{part}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject", "filename", "attack_type"])
        for s in splits:
          w.writerows(rows[s])
  return counts


def main(argv) -> None:
  del argv
  if not FLAGS.output:
    raise app.UsageError("--output is required")
  builder = synthetic_builder.prepare(FLAGS.synthetic_config, FLAGS.tfds_data_dir)
  counts = export(builder, FLAGS.output)
  print(f"wrote {sum(counts.values())} images and protocols for {len(synthetic.FAMILIES)} "
        f"families to {FLAGS.output}")


def define_flags() -> None:
  """Flags are defined only when run as a program (modules stay importable together)."""
  flags.DEFINE_string("output", None, "Output directory.")
  flags.DEFINE_string("synthetic_config", "64", "cmfl_synth_faces config.")
  flags.DEFINE_string("tfds_data_dir", "", "TFDS data dir ('' = default).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
