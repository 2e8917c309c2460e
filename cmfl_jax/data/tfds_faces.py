"""TFDS builder for real/synthetic face data placed by the user (manual download).

Prepared once into ArrayRecord files (random access, so the pipeline's
index-based epoch order, resume and per-host slicing work unchanged), then
usable with `tfds.load("cmfl_faces", ...)` or `--config.data.source=tfds`.

    import tensorflow_datasets as tfds
    from cmfl_jax.data import tfds_faces  # registers the builder
    builder = tfds.builder("cmfl_faces", data_dir=DATA_DIR)
    builder.download_and_prepare(file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from cmfl_jax.data import readers
from cmfl_jax.data.split import DataError, Encoded, Records, Split, pair_indices

_INSTRUCTIONS = """\
Place the images in the manual directory in one of two layouts:

1. Official protocols: `<manual_dir>/protocols/<protocol>/{train,dev,eval}.csv`
   (header `subject,filename,attack_type`, filenames relative to
   `<manual_dir>/data/`). Splits are named `<protocol>_<split>`,
   e.g. `stylegan2_train`.
2. Image folders: `<manual_dir>/<split>/real/**` for bona fide and
   `<manual_dir>/<split>/<generator>/**` for each generator's images.

Unreadable, truncated, tiny (< 32 px) or huge (> 64 Mpx) files are skipped and
logged. Images are stored as 8-bit RGB PNG (lossless: a JPEG's decoded pixels
are kept exactly).
"""


def face_features(size: int | None) -> tfds.features.FeaturesDict:
  """Features shared by both face builders (size None = any image size)."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(size, size, 3), dtype=np.uint8),
      # index 1 = bona fide, 0 = attack: the project's label convention.
      "label": tfds.features.ClassLabel(names=["attack", "bona_fide"]),
      "generator": tfds.features.Text(),
      "filename": tfds.features.Text(),
  })


class CmflFaces(tfds.core.GeneratorBasedBuilder):
  """Bona fide vs synthetic face images with the generator of each image."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=face_features(None),
        supervised_keys=("image", "label"),
        description="Face images labelled bona fide (1) or synthetic (0), with generator names.")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    root = os.fspath(dl_manager.manual_dir)
    protocols = os.path.join(root, "protocols")
    splits = {}
    if os.path.isdir(protocols):
      for proto in sorted(os.listdir(protocols)):
        for csv_name in sorted(os.listdir(os.path.join(protocols, proto))):
          if csv_name.endswith(".csv"):
            split = readers.read_protocol_csv(
                os.path.join(protocols, proto, csv_name), os.path.join(root, "data"))
            splits[f"{proto}_{split.name}"] = self._generate_examples(split, root)
    else:
      for name in sorted(os.listdir(root)):
        if os.path.isdir(os.path.join(root, name)):
          split = readers.read_image_folder(root, name)
          splits[name] = self._generate_examples(split, root)
    if not splits:
      raise DataError(f"no protocols or split folders in {root}.\n{_INSTRUCTIONS}")
    return splits

  def _generate_examples(self, split: Split, root: str):
    for path, label, gen in zip(split.paths, split.labels, split.generators):
      reason = readers.check_image_file(path, 32, 64_000_000, full_decode=True)
      if reason is not None:
        logging.warning("cmfl_faces: skipped %s: %s", path, reason)
        continue
      with Image.open(path) as im:
        pixels = readers.pil_to_rgb8(im)
      rel = os.path.relpath(path, root)
      yield rel, {"image": pixels, "label": int(label), "generator": str(gen), "filename": rel}


def load_split(data_config: Any, split_name: str) -> Split:
  """A split of a prepared TFDS dataset (`data.tfds_name`) for the input pipeline."""
  builder = tfds.builder(data_config.tfds_name, data_dir=data_config.tfds_data_dir or None)
  return split_from_builder(builder, split_name)


def split_from_builder(builder: tfds.core.DatasetBuilder, split_name: str,
                       made_from: Callable[[str], str | None] | None = None) -> Split:
  """A (possibly combined, "a+b") split as a random-access `Split`.

  `made_from`: stored filename -> the filename of the real it was made from
  (the benchmark's aligned fakes); a fake whose real is not in the split
  stays unpaired.

  ArrayRecord (recommended): records are read on demand by index. TFRecord
  (what plain `tfds.load` reads): the encoded images are held in host memory.
  """
  for part in split_name.split("+"):
    base = part.strip().split("[")[0]  # "name[:50%]": TFDS's slicing
    if base not in builder.info.splits:
      raise DataError(
          f"TFDS {builder.name}: no split {base!r}; have {sorted(builder.info.splits)}")
  skip = {"image": tfds.decode.SkipDecoding()}
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    meta = builder.as_data_source(split=split_name, decoders=skip)
    records = [meta[i] for i in range(len(meta))]
    storage = Records(builder.as_data_source(split=split_name))
  else:
    records = list(tfds.as_numpy(builder.as_dataset(split=split_name, decoders=skip,
                                                    shuffle_files=False)))
    storage = Encoded(np.asarray([r["image"] for r in records], dtype=object))
  labels = np.asarray([int(r["label"]) for r in records], np.int32)
  gens = np.asarray([_text(r["generator"]) for r in records])
  pairs = None
  if made_from is not None:
    names = [_text(r["filename"]) for r in records]
    pairs = pair_indices(names, [made_from(n) for n in names], split_name, strict=False)
  return Split(split_name, labels, gens, storage, made_from=pairs)


def filenames(builder: tfds.core.DatasetBuilder, split_name: str) -> list[str]:
  """The stored filenames of a (possibly combined) split, in its order."""
  meta = builder.as_data_source(split=split_name, decoders={"image": tfds.decode.SkipDecoding()})
  return [_text(meta[i]["filename"]) for i in range(len(meta))]


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)
