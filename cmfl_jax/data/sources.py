"""Data sources: each turns a split name into a `Split`, chosen by
`data.source` from the `SOURCES` table; unusable files are found and dropped
(and reported) before training starts.

  csv        official protocol CSVs (`subject,filename,attack_type`) under a data root
  folder     `<root>/<split>/real/**` and `<root>/<split>/<generator>/**`
  tfds       a prepared TFDS dataset (`cmfl_faces`, see `tfds_faces`)
  synthetic  the embedded benchmark (`cmfl_synth_faces`, generated on first use)
  toy        tiny in-memory stand-in data for tests
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from cmfl_jax.data import ops, readers
from cmfl_jax.data.split import DataError, Files, Pixels, Split


def _smooth_field(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  """Random images with a natural ~1/f amplitude spectrum, in [0, 1]."""
  f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
  amp = 1.0 / np.maximum(f, 1.0 / size) ** 1.2
  phase = rng.uniform(0, 2 * np.pi, (n, 3, size, size))
  x = np.real(np.fft.ifft2(amp * np.exp(1j * phase)))
  x -= x.min(axis=(-2, -1), keepdims=True)
  x /= x.max(axis=(-2, -1), keepdims=True)
  return np.moveaxis(x, 1, -1)


def toy_split(name: str, num_examples: int, image_size: int,
              seed: int | Sequence[int]) -> Split:
  """Tiny deterministic stand-in data for tests and smoke runs.

  Bona fide: 1/f random fields. Attack: the same kind of content, rendered at
  half resolution and nearest-neighbour upsampled (the classic GAN upsampling
  trace: spectral replicas at half the sampling rate). Not a benchmark.
  """
  rng = np.random.default_rng(seed)
  labels = np.arange(num_examples, dtype=np.int32) % 2
  rng.shuffle(labels)
  images = _smooth_field(rng, num_examples, image_size)
  fake = labels == 0
  if fake.any():
    half = _smooth_field(rng, int(fake.sum()), image_size // 2)
    images[fake] = half.repeat(2, axis=1).repeat(2, axis=2)[:, :image_size, :image_size]
  images = (images * 255).round().astype(np.uint8)
  gens = np.where(labels == 1, "real", "toy_nn_upsampler")
  return Split(name, labels, gens, Pixels(images))


# ----------------------------------------------------------------------------
# The table of sources: data config -> (split name -> Split)
# ----------------------------------------------------------------------------
def _toy(data: Any) -> Callable[[str], Split]:
  sizes = dict(data.toy_sizes)
  return lambda name: toy_split(name, sizes.get(name, sizes.get("default", 64)), data.image_size,
                                seed=[data.toy_seed, zlib.crc32(name.encode())])


def _csv(data: Any) -> Callable[[str], Split]:
  return lambda name: readers.read_protocol_csv(
      os.path.join(data.protocol_dir, f"{name}.csv"), data.data_root, name)


def _folder(data: Any) -> Callable[[str], Split]:
  return lambda name: readers.read_image_folder(data.data_root, name)


def _tfds(data: Any) -> Callable[[str], Split]:
  from cmfl_jax.data import tfds_faces  # TFDS only when used; registers the builder
  return lambda name: tfds_faces.load_split(data, name)


def _synthetic(data: Any) -> Callable[[str], Split]:
  from cmfl_jax.data import tfds_faces
  from cmfl_jax.data.synthetic import builder, holdout, sampler
  prepared = builder.prepare(data.synthetic_config, data.tfds_data_dir)
  camera = int(data.get("holdout_camera", -1))
  roles = {data.train_split: "others", data.val_split: "held_out"}

  def read(name: str) -> Split:
    split = tfds_faces.split_from_builder(prepared, name, sampler.made_from)
    if camera < 0 or name not in roles:
      return split
    cfg = prepared.builder_config
    cameras = holdout.camera_ids(tfds_faces.filenames(prepared, name), split.made_from,
                                 cfg.size, cfg.seed)
    return holdout.leave_camera_out(split, cameras, camera, roles[name])

  return read


SOURCES: dict[str, Callable[[Any], Callable[[str], Split]]] = {
    "csv": _csv, "folder": _folder, "tfds": _tfds, "synthetic": _synthetic, "toy": _toy}


def cache_in_memory(split: Split) -> Split:
  """Decodes every file once into host memory (`data.cache`): later epochs read
  pixels instead of files. Needs images of one size (aligned crops)."""
  if split.paths is None:
    return split
  # The same decoder as the file path (TF's), so cached pixels are identical.
  arrays = [ops.decode_image(tf.io.read_file(p)).numpy() for p in split.paths]
  shapes = {a.shape for a in arrays}
  if len(shapes) > 1:
    raise DataError(f"data.cache needs images of one size; split {split.name!r} has "
                    f"{sorted(shapes)[:3]}...")
  return dataclasses.replace(split, storage=Pixels(np.stack(arrays)))


def verify_cache_path(data_config: Any) -> str | None:
  """Where the file check's verdicts are cached: `data.verify_cache`, else the
  audit's file (`data.audit_cache`, else the per-user default)."""
  return data_config.get("verify_cache", "") or data_config.get("audit_cache", "") or None


def scan_split(split: Split, data_config: Any) -> tuple[Split, list[dict]]:
  """Drops unusable files (listed with reasons) so no epoch dies on one of them.
  Verdicts come from the per-file cache where the file is unchanged, so only the
  first start pays for a full decode (`data.verify`)."""
  if split.paths is None or data_config.verify == "none":
    return split, []
  reasons = readers.check_image_files(
      split.paths.tolist(), readers.min_image_side(data_config), data_config.max_pixels,
      data_config.verify == "decode", verify_cache_path(data_config))
  bad = [{"split": split.name, "path": str(p), "reason": r}
         for p, r in zip(split.paths, reasons) if r is not None]
  keep = np.asarray([r is None for r in reasons])
  return split.select(keep), bad


def align_split(split: Split, data: Any) -> tuple[Split, list[dict]]:
  """`data.align`: the split's photographs detected and aligned once into a
  cache (`data.align_dir`, resumable; process 0 first) and the split pointing
  at the crops; photographs without a face are dropped and listed."""
  if not data.align or split.paths is None:
    return split, []
  import jax
  from jax.experimental import multihost_utils

  from cmfl_jax.data import aligned_crops
  options = aligned_crops.AlignOptions(data.align, data.align_policy, data.align_size)
  cache = os.path.join(data.align_dir or aligned_crops.default_cache_dir(),
                       f"{data.align}_{data.align_policy}_{data.align_size}")
  jobs = aligned_crops.cache_jobs(split.paths, cache)
  manifest = os.path.join(cache, aligned_crops.MANIFEST)
  if jax.process_index() == 0:
    aligned_crops.align_many(jobs, options, manifest, progress=False)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"aligned {split.name}")
  records = aligned_crops.read_manifest(manifest)
  outputs = [records[p]["outputs"][:1] for p in split.paths]
  keep = np.asarray([bool(o) for o in outputs])
  skipped = [{"split": split.name, "path": str(p), "reason": f"no face: {records[p]['reason']}"}
             for p, k in zip(split.paths, keep) if not k]
  aligned = dataclasses.replace(
      split.select(keep), storage=Files(np.asarray([o[0] for o, k in zip(outputs, keep) if k])))
  return aligned, skipped


def load_splits(data_config: Any, names: Sequence[str] | None = None
                ) -> tuple[dict[str, Split], list[dict]]:
  """The named splits (default: train, val and every eval split of
  `config.data`) with unusable files removed; returns (splits, skipped files)."""
  if names is None:
    names = [data_config.train_split, data_config.val_split, *data_config.eval_splits]
  names = list(dict.fromkeys(n for n in names if n))
  if data_config.source not in SOURCES:
    raise ValueError(f"unknown data source {data_config.source!r}; choose from {sorted(SOURCES)}")
  read = SOURCES[data_config.source](data_config)
  splits, skipped = {}, []
  for name in names:
    split, no_face = align_split(read(name), data_config)
    split, bad = scan_split(split, data_config)
    skipped += no_face + bad
    split.check_both_classes()
    splits[name] = cache_in_memory(split) if data_config.cache else split
  return splits, skipped
