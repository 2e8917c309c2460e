"""TFDS builder of the embedded benchmark (`cmfl_synth_faces`): the images
of `sampler.sample`, prepared once into ArrayRecord files, per version."""

from __future__ import annotations

import re

import tensorflow_datasets as tfds

from cmfl_jax.data import tfds_faces
from cmfl_jax.data.synthetic import sampler
from cmfl_jax.data.synthetic.simulate import FAMILIES, REAL_SOURCES, SPLITS


class SynthFacesConfig(tfds.core.BuilderConfig):
  """Resolution and per-source split sizes."""

  def __init__(self, *, size: int, train: int, dev: int, eval_: int, seed: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.size, self.seed = size, seed
    self.sizes = {"train": train, "dev": dev, "eval": eval_}


class CmflSynthFaces(tfds.core.GeneratorBasedBuilder):
  """Simulated bona fide and synthetic faces (version 2: `v2`; 1: `simulate`).

  Splits: `<source>_<split>` for source in real + the six families (train,
  dev, eval) and `real2_eval`. Combine with TFDS split arithmetic, e.g.
  `real_train+stylegan2_train`.
  """

  VERSION = tfds.core.Version(sampler.LATEST)
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "2.0.0": "Synthetic families as sharp as bona fide, with small traces; three training "
               "cameras (issue #20).",
      "2.1.0": "Aligned training fakes `<family>_recon_{train,dev}` and "
               "`<family>_inpaint_{train,dev}`, each made from the real of the same index "
               "(issue #38); every 2.0.0 split unchanged.",
  }
  BUILDER_CONFIGS = [
      SynthFacesConfig(name="64", description="64x64 (default; 2-core friendly)", size=64,
                       train=512, dev=128, eval_=256),
      SynthFacesConfig(name="128", description="128x128", size=128, train=1024, dev=256,
                       eval_=512),
      SynthFacesConfig(name="224", description="224x224, paper resolution", size=224,
                       train=2048, dev=512, eval_=1024),
      SynthFacesConfig(name="tiny", description="32x32, for tests", size=32, train=16, dev=8,
                       eval_=8),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds_faces.face_features(self.builder_config.size),
        supervised_keys=("image", "label"),
        description=sampler.VERSIONS[str(self.version)].__doc__.split("\n\n")[0])

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    out = {}
    for source in sampler.sources(str(self.version)):
      for split in SPLITS:
        if source == "real2" and split != "eval":
          continue
        if source in sampler.ALIGNED_SOURCES and split not in sampler.ALIGNED_SPLITS:
          continue
        out[f"{source}_{split}"] = self._generate_examples(source, split)
    return out

  def _generate_examples(self, source: str, split: str):
    cfg = self.builder_config
    label = 1 if source in REAL_SOURCES else 0
    # An aligned source has one fake per real of its split; its generator is
    # the family (the filename says how the fake was made from its real).
    generator = sampler.generator_of(source)
    images = sampler.sample(source, split, cfg.sizes[split], cfg.size, cfg.seed, str(self.version))
    for i, img in enumerate(images):
      name = f"{source}/{split}/{i:06d}.png"
      yield name, {"image": img, "label": label, "generator": generator, "filename": name}


class CmflSynthFacesV2(CmflSynthFaces, skip_registration=True):
  """Version 2.0.0 (no aligned sources), kept buildable like version 1."""

  name = "cmfl_synth_faces"
  VERSION = tfds.core.Version("2.0.0")


class CmflSynthFacesV1(CmflSynthFaces, skip_registration=True):
  """Version 1 (`simulate`), kept buildable: TFDS prepares only a builder's
  own VERSION, so the old version is a builder of its own (same name and
  directory layout)."""

  name = "cmfl_synth_faces"
  VERSION = tfds.core.Version("1.0.0")


_BUILDERS = {str(b.VERSION): b for b in (CmflSynthFaces, CmflSynthFacesV2, CmflSynthFacesV1)}


def make_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """A predefined config ("64", "128", "224", "tiny") or a custom one named
  `s<size>_t<train>_d<dev>_e<eval>` (images per source and split), optionally
  with a version as in TFDS, `64:1.0.0` (default: the latest, 2.1.0)."""
  config_name, _, version = name.partition(":")
  version = version or sampler.LATEST
  if version not in sampler.VERSIONS:
    raise ValueError(f"unknown cmfl_synth_faces version {version!r} in {name!r}; choose from "
                     f"{sorted(sampler.VERSIONS)}")
  if config_name in {c.name for c in CmflSynthFaces.BUILDER_CONFIGS}:
    return _BUILDERS[version](config=config_name, data_dir=data_dir)
  m = re.fullmatch(r"s(\d+)_t(\d+)_d(\d+)_e(\d+)", config_name)
  if not m:
    raise ValueError(f"unknown cmfl_synth_faces config {name!r}: use 64, 128, 224, tiny or "
                     "s<size>_t<train>_d<dev>_e<eval>, e.g. s96_t2048_d256_e512, optionally "
                     "with :<version>, e.g. 64:1.0.0")
  size, train, dev, eval_ = (int(g) for g in m.groups())
  config = SynthFacesConfig(name=config_name, description="custom", size=size, train=train,
                            dev=dev, eval_=eval_)
  return _BUILDERS[version](config=config, data_dir=data_dir)


def prepare(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The benchmark's builder (config `name`, see `make_builder`), generated and
  prepared on first use (process 0 first, so hosts sharing a data dir do not race)."""
  import jax
  from jax.experimental import multihost_utils
  builder = make_builder(name, data_dir or None)
  if jax.process_index() == 0:
    builder.download_and_prepare(file_format="array_record")
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("cmfl_synth_faces prepared")
    builder.download_and_prepare(file_format="array_record")
  return builder
