"""Weights interop: ImageNet init from local files, official PyTorch checkpoints
converted to Orbax, and score parity with the PyTorch model.

State dicts in torchvision's layout are written here from torchvision's layer
definitions (NumPy only), independently of `cmfl_jax.models.torch_weights`, so the file
tests need no PyTorch. Parity tests build the official detectors in PyTorch
(`cmfl_jax.bench.torch_reference`; random weights, never downloaded) and skip
without it.
The full DenseNet-161 parity run takes ~1 min on 2 cores and runs only with
CMFL_FULL_PARITY=1 (see docs/weights.md).
"""

import contextlib
import os
import runpy
import sys
from pathlib import Path
from unittest import mock

import jax
import numpy as np
import pytest
from absl import flags
from flax import nnx
from PIL import Image

from cmfl_jax import convert, models
from cmfl_jax.evaluation import evaluate
from cmfl_jax.models import torch_weights as weights
from cmfl_jax.scoring import decisions, model as scoring_model
from cmfl_jax.training import loop as train, steps

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "configs" / "default.py")
# Reduced width, the paper's truncation: 3 blocks, stream stops after transition2.
TINY = {"backbone": "densenet121", "growth_rate": 4, "block_config": (2, 2, 2),
        "num_init_features": 8, "bn_size": 2, "num_blocks": 2}
TINY_SPEC = models.densenet_spec(**{k: v for k, v in TINY.items() if k not in ("backbone",
                                                                                 "num_blocks")})
IMAGE_SIZE = 224
# `features.children()` index of each part the paper's stream keeps ([0:8]).
OFFICIAL_INDEX = {"conv0": 0, "norm0": 1, "denseblock1": 4, "transition1": 5,
                  "denseblock2": 6, "transition2": 7}


def torch_reference():
  """`cmfl_jax.bench.torch_reference` (the official detectors in PyTorch), or skip."""
  pytest.importorskip("torch")
  from cmfl_jax.bench import torch_reference as ref
  return ref


def randomize(model, calibration_inputs, seed: int = 0, head_scale: float = 30.0):
  """Random weights and non-trivial BatchNorm running statistics, then eval mode.

  BN affine parameters are random; running stats are the statistics of one
  train-mode pass over `calibration_inputs` (so eval-mode BN keeps activations
  in range through deep streams). Head weights are large and their biases
  centre the logits on the calibration images, so probabilities spread over
  (0, 1) without saturating and the comparison is sensitive.
  """
  import torch
  from torch import nn
  torch.manual_seed(seed)
  heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.uniform_(m.weight, 0.5, 1.5)
      nn.init.normal_(m.bias, 0.0, 0.2)
      m.reset_running_stats()
      m.momentum = None  # cumulative average: one pass -> that batch's statistics
  for m in heads:
    nn.init.normal_(m.weight, 0.0, head_scale / m.in_features ** 0.5)
  model.train()
  with torch.no_grad():
    model(*calibration_inputs)
  model.eval()
  mean_inputs = {}
  hooks = [m.register_forward_pre_hook(
      lambda m, args: mean_inputs.__setitem__(m, args[0].mean(0))) for m in heads]
  with torch.no_grad():
    model(*calibration_inputs)
    for m in heads:
      m.bias.copy_(-m.weight[0] @ mean_inputs[m] + 0.3 * torch.randn(1))
  for h in hooks:
    h.remove()
  return model


def official_inputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(rgb, spectrum) NCHW float32 inputs of the official test script (aligned
  mode) for uint8 NHWC images: ToTensor + ImageNet Normalize, and
  `rgb_to_fft_tensor_filter_with_percentile` (NumPy, float64)."""
  from test_spectrum import reference_spectrum
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  rgb = (images.astype(np.float32) / 255.0 - mean) / std
  freq = np.stack([reference_spectrum(im) for im in images]).astype(np.float32)
  return tuple(np.ascontiguousarray(x.transpose(0, 3, 1, 2)) for x in (rgb, freq))


# ----------------------------------------------------------------------------
# Torch-free state dicts in torchvision's layout
# ----------------------------------------------------------------------------
def torchvision_shapes(spec: models.DenseNetSpec, num_classes: int = 1000) -> dict:
  """Keys and shapes of torchvision `DenseNet(...).state_dict()`."""
  shapes = {}

  def bn(name, c):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.{leaf}"] = (c,)
    shapes[f"{name}.num_batches_tracked"] = ()

  g, width, c = spec.growth_rate, spec.bn_size * spec.growth_rate, spec.num_init_features
  shapes["features.conv0.weight"] = (c, 3, 7, 7)
  bn("features.norm0", c)
  for b, n in enumerate(spec.block_config, 1):
    for l in range(1, n + 1):
      p, cin = f"features.denseblock{b}.denselayer{l}", c + (l - 1) * g
      bn(f"{p}.norm1", cin)
      shapes[f"{p}.conv1.weight"] = (width, cin, 1, 1)
      bn(f"{p}.norm2", width)
      shapes[f"{p}.conv2.weight"] = (g, width, 3, 3)
    c += n * g
    if b < len(spec.block_config):
      bn(f"features.transition{b}.norm", c)
      shapes[f"features.transition{b}.conv.weight"] = (c // 2, c, 1, 1)
      c //= 2
  bn("features.norm5", c)
  shapes["classifier.weight"] = (num_classes, c)
  shapes["classifier.bias"] = (num_classes,)
  return shapes


def random_tensors(shapes: dict, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in shapes.items():
    if key.endswith("num_batches_tracked"):
      out[key] = np.array(7, np.int64)
    elif key.endswith("running_var"):
      out[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    else:
      out[key] = rng.normal(0.0, 0.3, shape).astype(np.float32)
  return out


def imagenet_file_layout(tensors: dict, layout: str) -> dict:
  """The same tensors under the key names of another producer."""
  if layout in ("torchvision", "timm"):  # timm's DenseNet has torchvision's current names
    return dict(tensors)
  if layout == "torchvision_legacy":  # pre-0.3 torchvision: denselayerN.norm.1.weight
    return {k.replace(".norm1.", ".norm.1.").replace(".norm2.", ".norm.2.")
            .replace(".conv1.", ".conv.1.").replace(".conv2.", ".conv.2.")
            if "denselayer" in k else k: v for k, v in tensors.items()}
  if layout == "dataparallel_features":  # nn.DataParallel(model.features).state_dict()
    return {"module." + k.removeprefix("features."): v for k, v in tensors.items()
            if k.startswith("features.")}
  raise ValueError(layout)


def official_tensors(imagenet: dict, channels: int, arch: str = "two_stream",
                     seed: int = 1) -> dict:
  """An official-code state dict whose streams hold `imagenet`'s features[0:8]."""
  rng = np.random.default_rng(seed)
  streams = ("enc_rgb", "enc_f") if arch == "two_stream" else ("enc_rgb",)
  out = {}
  for key, value in imagenet.items():
    parts = key.split(".")
    if parts[0] == "features" and parts[1] in OFFICIAL_INDEX:
      for s, stream in enumerate(streams):
        out[".".join([stream, str(OFFICIAL_INDEX[parts[1]])] + parts[2:])] = value + s
  heads = {"linear_rgb": channels, "linear_f": channels, "linear": 2 * channels}
  for head, cin in heads.items():
    if arch == "two_stream" or head == "linear_rgb":
      out[f"{head}.weight"] = rng.normal(size=(1, cin)).astype(np.float32)
      out[f"{head}.bias"] = rng.normal(size=(1,)).astype(np.float32)
  return out


def tiny_detector(arch: str = "two_stream", input_kind: str = "rgb") -> nnx.Module:
  """Abstract (shape-only) variables: whatever the file fills becomes an array."""
  return nnx.eval_shape(lambda: models.create_model(dict(TINY, arch=arch, input=input_kind),
                                                    rngs=nnx.Rngs(0)))


def is_abstract(tree) -> bool:
  return all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def tiny_config(arch: str = "two_stream", input_kind: str = "rgb"):
  config = runpy.run_path(DEFAULT)["get_config"]()
  config.model.update(TINY)
  config.model.arch = arch
  config.model.input = input_kind
  config.data.image_size = IMAGE_SIZE
  config.train.eval_batch_size = 4
  return config


def assert_streams_hold(model: nnx.Module, tensors: dict) -> None:
  """Spot checks by name; every stream variable filled; heads untouched."""
  t = tensors
  for stream in (model.rgb_stream, model.freq_stream):
    np.testing.assert_array_equal(stream.conv0.kernel[...],
                                  t["features.conv0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(stream.norm0.scale[...], t["features.norm0.weight"])
    np.testing.assert_array_equal(stream.norm0.mean[...], t["features.norm0.running_mean"])
    layer = stream.blocks[1].layers[1]
    np.testing.assert_array_equal(layer.conv2.kernel[...], t[
        "features.denseblock2.denselayer2.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(layer.norm1.bias[...],
                                  t["features.denseblock2.denselayer2.norm1.bias"])
    np.testing.assert_array_equal(stream.transitions[1].conv.kernel[0, 0],
                                  t["features.transition2.conv.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(stream.transitions[1].norm.var[...],
                                  t["features.transition2.norm.running_var"])
    assert len(stream.blocks) == 2 and stream.norm5 is None  # block 3 and norm5 ignored
    assert not any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(stream)))
  assert is_abstract(nnx.state(model.joint_head)) and is_abstract(nnx.state(model.rgb_head))


# ----------------------------------------------------------------------------
# ImageNet init
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["torchvision", "timm", "torchvision_legacy",
                                    "dataparallel_features"])
def test_imagenet_init_from_safetensors_needs_no_torch(tmp_path, monkeypatch, layout):
  from safetensors.numpy import save_file
  tensors = random_tensors(torchvision_shapes(TINY_SPEC))
  path = str(tmp_path / "densenet.safetensors")
  save_file(imagenet_file_layout(tensors, layout), path)
  monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
  model = tiny_detector()
  assert weights.load_into(model, weights.read_state_dict(path)) > 0
  assert_streams_hold(model, tensors)


def test_torchvision_shapes_match_the_torch_module_trees():
  ref = torch_reference()
  want = {k: v for k, v in torchvision_shapes(TINY_SPEC).items() if k.startswith("features.")}
  modules = [ref.densenet_features(TINY_SPEC)]
  try:
    import torchvision
    modules.append(torchvision.models.DenseNet(TINY_SPEC.growth_rate, TINY_SPEC.block_config,
                                               TINY_SPEC.num_init_features,
                                               TINY_SPEC.bn_size).features)
  except ImportError:
    pass
  for module in modules:
    assert {f"features.{k}": tuple(v.shape) for k, v in module.state_dict().items()} == want


@contextlib.contextmanager
def no_torch():
  """`import torch` fails inside: what runs there provably needs no PyTorch."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(sys.modules, "torch", None)
    yield


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_imagenet_init_from_pth_needs_no_torch(tmp_path, legacy):
  torch = pytest.importorskip("torch")
  tensors = random_tensors(torchvision_shapes(TINY_SPEC))
  path = str(tmp_path / "densenet161.pth")
  torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, path,
             _use_new_zipfile_serialization=not legacy)
  model = tiny_detector()
  with no_torch():
    with pytest.raises(ImportError):
      import torch as _  # pylint: disable=import-outside-toplevel,reimported
    read = weights.read_state_dict(path)
  assert {k: (v.dtype, v.shape) for k, v in read.items()} == {
      k: (v.dtype, v.shape) for k, v in tensors.items()}
  weights.load_into(model, read)
  assert_streams_hold(model, tensors)


class _RunsCode:
  """Unpickling this calls open(marker, "w"): what a malicious checkpoint could do."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return open, (self.marker, "w")


def test_pickle_that_would_execute_code_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  marker = tmp_path / "executed"
  path = str(tmp_path / "evil.pth")
  torch.save({"state_dict": {"features.conv0.weight": torch.zeros(1),
                             "payload": _RunsCode(str(marker))}}, path)
  with pytest.raises(weights.WeightsError, match="refusing to load"):
    weights.read_state_dict(path)
  assert not marker.exists()


def test_training_starts_from_pretrained_file(tmp_path, monkeypatch):
  """train_and_evaluate (main's train mode) loads `model.pretrained` into the
  fresh state it trains (0 epochs: the hook without compiling a step). The
  smoke model keeps all its blocks, so norm5 comes from the file too."""
  from safetensors.numpy import save_file
  config = runpy.run_path(str(ROOT / "configs" / "smoke.py"))["get_config"]()
  spec = models.ModelConfig.from_config(config.model).spec
  tensors = random_tensors(torchvision_shapes(spec))
  config.model.pretrained = str(tmp_path / "imagenet.safetensors")
  save_file(tensors, config.model.pretrained)
  config.train.num_epochs = 0
  calls, original = [], weights.init_from_file

  def spy(*args):
    calls.append((args, original(*args)))
    return calls[-1][1]

  monkeypatch.setattr(weights, "init_from_file", spy)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  assert len(calls) == 1
  (before, graphdef, path), after = calls[0]
  assert path == config.model.pretrained
  model = nnx.merge(graphdef, after.params, after.batch_stats)
  for stream in (model.rgb_stream, model.freq_stream):
    np.testing.assert_array_equal(stream.conv0.kernel[...],
                                  tensors["features.conv0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(stream.norm5.var[...], tensors["features.norm5.running_var"])
  for name in ("params", "batch_stats"):
    old, new = nnx.State(getattr(before, name)), nnx.State(getattr(after, name))
    for part in ("rgb_stream", "freq_stream"):  # every stream variable replaced
      assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old[part]),
                                                          jax.tree.leaves(new[part])))
    for part in ("rgb_head", "freq_head", "joint_head"):  # heads keep their initialisation
      if part in old:
        jax.tree.map(np.testing.assert_array_equal, old[part], new[part])


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------
def test_missing_unexpected_and_mis_shaped_keys_are_listed_together():
  tensors = random_tensors(torchvision_shapes(TINY_SPEC))
  del tensors["features.denseblock2.denselayer1.conv1.weight"]
  tensors["features.denseblock1.denselayer1.conv3.weight"] = np.zeros((1,), np.float32)
  tensors["features.conv0.weight"] = np.zeros((8, 3, 5, 5), np.float32)
  with pytest.raises(weights.WeightsError) as e:
    weights.load_into(tiny_detector(), tensors, source="bad.safetensors")
  msg = str(e.value)
  assert "bad.safetensors" in msg
  assert "1 missing keys" in msg and "denseblock2.denselayer1.conv1.weight" in msg
  assert "1 unexpected keys" in msg and "denseblock1.denselayer1.conv3.weight" in msg
  assert "conv0.weight: file (8, 3, 5, 5), model (8, 3, 7, 7)" in msg


def test_official_checkpoint_of_another_arch_is_refused():
  imagenet = random_tensors(torchvision_shapes(TINY_SPEC))
  two_stream = official_tensors(imagenet, TINY_SPEC.channels_after(2))
  with pytest.raises(weights.WeightsError) as e:
    weights.load_into(tiny_detector("one_stream"), two_stream, weights.OFFICIAL)
  msg = str(e.value)
  assert "unexpected keys" in msg and "enc_f.0.weight" in msg and "linear_f.bias" in msg
  assert "missing" not in msg
  # An ImageNet file where an official checkpoint is required: named as such.
  with pytest.raises(weights.WeightsError, match="look like the imagenet layout"):
    weights.load_into(tiny_detector(), imagenet, weights.OFFICIAL)


def test_official_keys_with_dataparallel_prefix_load_the_same():
  imagenet = random_tensors(torchvision_shapes(TINY_SPEC))
  tensors = official_tensors(imagenet, TINY_SPEC.channels_after(2))
  a, b = tiny_detector(), tiny_detector()
  weights.load_into(a, tensors, weights.OFFICIAL)
  weights.load_into(b, {"module." + k: v for k, v in tensors.items()})  # detected
  jax.tree.map(np.testing.assert_array_equal, nnx.state(a), nnx.state(b))
  np.testing.assert_array_equal(a.freq_stream.conv0.kernel[...],
                                (imagenet["features.conv0.weight"] + 1).transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(a.joint_head.linear.kernel[...], tensors["linear.weight"].T)


def test_eval_report_of_a_converted_checkpoint_has_no_val_loss():
  from cmfl_jax.evaluation import report
  lines = report.summary_lines({"checkpoint": "best_0", "step": 0, "val_loss": None,
                                "splits": {}})
  assert "validation loss n/a" in lines[0]


# ----------------------------------------------------------------------------
# Official checkpoint -> Orbax -> eval / predict, parity with PyTorch
# ----------------------------------------------------------------------------
def varied_images(n: int, seed: int) -> np.ndarray:
  """Smooth random images of varied detail, contrast and noise, uint8 HWC."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    grid = int(rng.integers(3, 40))
    low = Image.fromarray(rng.integers(0, 256, (grid, grid, 3), np.uint8))
    img = np.asarray(low.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), np.float32)
    img = img * rng.uniform(0.3, 1.2) + rng.uniform(-40, 60)
    img += rng.normal(0, rng.uniform(0, 30), img.shape)
    out.append(np.clip(img, 0, 255).astype(np.uint8))
  return np.stack(out)


def torch_probs(model, *inputs) -> list[np.ndarray]:
  """P(real) of every head: (joint, rgb, freq) or (joint,)."""
  import torch
  with torch.no_grad():
    return [o.numpy().reshape(-1) for o in model(*(torch.from_numpy(x) for x in inputs))]


def save_official_checkpoint(arch: str, path: str, seed: int, spec=TINY_SPEC,
                             head_scale: float = 30.0):
  """A randomly initialised official model, saved as the official train.py does
  (skips without PyTorch)."""
  ref = torch_reference()
  import torch
  cls = ref.MultiStreamDenseNet if arch == "two_stream" else ref.OneStreamDenseNet
  model = cls(spec, 2)
  calibration = [torch.from_numpy(x) for x in official_inputs(varied_images(4, seed + 100))]
  randomize(model, calibration if arch == "two_stream" else calibration[1:], seed, head_scale)
  torch.save({"epoch": 0, "iteration": 0, "loss": [0.69, 0.5],
              "state_dict": model.state_dict()}, path)
  return model


def restored_model(config, workdir):
  """As `--mode=eval` restores it, plus the eval-mode model for `forward_streams`."""
  state, eval_fn, _, meta, _ = evaluate.restore_for_eval(config, workdir, "best")
  programs = steps.create_train_state(config, steps.make_mesh(), abstract=True)[1]
  return nnx.merge(programs.eval_graphdef, state.params, state.batch_stats), state, eval_fn, meta


def eval_batch(images: np.ndarray) -> dict:
  batch = {"image": images, "label": np.zeros(len(images), np.int32),
           "mask": np.ones(len(images), bool)}
  return jax.device_put(batch, steps.batch_sharding(steps.make_mesh()))


def nhwc(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def run_convert_cli(args: list[str]) -> int:
  """`python -m cmfl_jax.convert ARGS`, in this process (own flag registry;
  config overrides are read from sys.argv)."""
  argv = ["convert", *args]
  flag_values = flags.FlagValues()
  with mock.patch.object(sys, "argv", argv):
    convert.define_flags(flag_values)
    return convert.main(flag_values(argv), flag_values)


@pytest.fixture(scope="module")
def converted_two_stream(tmp_path_factory):
  """An official two_stream checkpoint converted by the `cmfl_jax.convert` CLI."""
  tmp = tmp_path_factory.mktemp("official")
  checkpoint, out = str(tmp / "model_0_0.pth"), str(tmp / "converted")
  torch_model = save_official_checkpoint("two_stream", checkpoint, 0)
  args = [f"--torch_checkpoint={checkpoint}", "--arch=two_stream", f"--output={out}",
          "--config.train.eval_batch_size=4", *(f"--config.model.{k}={v}" for k, v in TINY.items())]
  with no_torch():  # converting needs no PyTorch
    assert run_convert_cli(args) == 0
  assert run_convert_cli(args) == 1  # refuses to overwrite
  return torch_model, out


def test_converted_two_stream_matches_pytorch_heads(converted_two_stream):
  torch_model, workdir = converted_two_stream
  config = scoring_model.config_from_checkpoint(workdir, "best")
  assert config.model.arch == "two_stream" and config.model.growth_rate == 4
  model, state, eval_fn, meta = restored_model(config, workdir)
  assert meta["step"] == 0 and meta["dev_threshold"] is None and meta["val_loss"] is None
  images = varied_images(4, 1)
  rgb, freq = official_inputs(images)
  want = torch_probs(torch_model, rgb, freq)  # joint, rgb, freq
  assert min(np.ptp(w) for w in want) > 0.01  # spread out: a sensitive comparison
  logits = nnx.jit(lambda m, a, b: m.forward_streams(a, b))(model, nhwc(rgb), nhwc(freq))
  for head, w in zip(("joint", "rgb", "freq"), want):
    np.testing.assert_allclose(jax.nn.sigmoid(logits[head]), w, atol=1e-4, err_msg=head)
  # The compiled eval step computes both inputs on device from uint8 pixels.
  _, probs = eval_fn(state, eval_batch(images))
  for head, w in zip(("joint", "rgb", "freq"), want):
    np.testing.assert_allclose(probs[head], w, atol=1e-4, err_msg=head)


def test_predict_on_aligned_files_matches_official_test_script(converted_two_stream, tmp_path):
  torch_model, workdir = converted_two_stream
  images = varied_images(3, 2)
  paths = []
  for i, img in enumerate(images):
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(img).save(paths[-1])
  predictions = decisions.predict(workdir, paths)
  assert predictions.threshold is None
  rows = list(predictions.rows)
  got = np.array([r["score"] for r in rows])
  want = torch_probs(torch_model, *official_inputs(images))[0]
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert [r["verdict"] for r in rows] == ["real" if s >= 0.5 else "synthetic" for s in got]


def test_convert_one_stream_spectrum_model(tmp_path):
  """A OneStreamDenseNet trained on spectra (official `--spectra fft`)."""
  checkpoint, out = str(tmp_path / "fft.pth"), str(tmp_path / "converted")
  torch_model = save_official_checkpoint("one_stream", checkpoint, 3)
  with no_torch():
    convert.convert(tiny_config("one_stream", "freq"), checkpoint, out)
  config = scoring_model.config_from_checkpoint(out, "best")
  assert config.model.input == "freq" and config.loss.objective == "bce"
  _, state, eval_fn, _ = restored_model(config, out)
  images = varied_images(4, 4)
  want = torch_probs(torch_model, official_inputs(images)[1])[0]
  _, probs = eval_fn(state, eval_batch(images))
  np.testing.assert_allclose(probs["joint"], want, atol=1e-4)
  with pytest.raises(FileExistsError, match="already holds checkpoints"):
    convert.convert(config, checkpoint, out)


@pytest.mark.skipif(os.environ.get("CMFL_FULL_PARITY") != "1",
                    reason="paper-size parity (~1 min on 2 cores): set CMFL_FULL_PARITY=1")
def test_full_densenet161_parity_at_224(tmp_path):
  """The paper's model (densenet161 through transition2, 224x224): official
  checkpoint -> convert -> restore, heads vs PyTorch."""
  checkpoint, out = str(tmp_path / "model_0_0.pth"), str(tmp_path / "converted")
  torch_model = save_official_checkpoint("two_stream", checkpoint, 0,
                                         models.densenet_spec("densenet161"), head_scale=10.0)
  config = runpy.run_path(DEFAULT)["get_config"]()
  config.train.eval_batch_size = 2
  with no_torch():
    convert.convert(config, checkpoint, out)
  model, state, eval_fn, _ = restored_model(config, out)
  images = varied_images(2, 1)
  rgb, freq = official_inputs(images)
  want = torch_probs(torch_model, rgb, freq)
  print("PyTorch probabilities (joint, rgb, freq):", want)
  assert all(np.all((w > 1e-3) & (w < 1 - 1e-3)) for w in want)  # not saturated
  logits = nnx.jit(lambda m, a, b: m.forward_streams(a, b))(model, nhwc(rgb), nhwc(freq))
  _, probs = eval_fn(state, eval_batch(images))
  same_inputs = max(float(np.max(np.abs(jax.nn.sigmoid(logits[h]) - w)))
                    for h, w in zip(("joint", "rgb", "freq"), want))
  from_pixels = max(float(np.max(np.abs(probs[h] - w)))
                    for h, w in zip(("joint", "rgb", "freq"), want))
  print(f"densenet161 two_stream 224x224: max |p_jax - p_torch| = {same_inputs:.2e} on the same "
        f"preprocessed inputs, {from_pixels:.2e} from uint8 pixels (spectrum on device)")
  assert same_inputs < 1e-4 and from_pixels < 1e-4
