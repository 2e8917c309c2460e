"""PyTorch side of the weights tests: torchvision's DenseNet `features` and the
official detectors around it, written from their published definitions.

torchvision is used when importable; otherwise an equivalent module tree with
torchvision's names (features.conv0, norm0, relu0, pool0,
denseblockN.denselayerM.{norm1,relu1,conv1,norm2,relu2,conv2},
transitionN.{norm,relu,conv,pool}, norm5) is built here. Importing this module
fails without PyTorch; tests skip on that.
"""

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class DenseLayer(nn.Module):

  def __init__(self, cin, growth_rate, bn_size):
    super().__init__()
    width = bn_size * growth_rate
    self.norm1 = nn.BatchNorm2d(cin)
    self.relu1 = nn.ReLU()
    self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(width)
    self.relu2 = nn.ReLU()
    self.conv2 = nn.Conv2d(width, growth_rate, 3, padding=1, bias=False)

  def forward(self, x):
    y = self.conv1(self.relu1(self.norm1(x)))
    return self.conv2(self.relu2(self.norm2(y)))


class DenseBlock(nn.ModuleDict):

  def __init__(self, num_layers, cin, growth_rate, bn_size):
    super().__init__({f"denselayer{i + 1}": DenseLayer(cin + i * growth_rate, growth_rate, bn_size)
                      for i in range(num_layers)})

  def forward(self, x):
    for layer in self.values():
      x = torch.cat([x, layer(x)], 1)
    return x


def densenet_features(spec) -> nn.Sequential:
  """A torchvision DenseNet's `features` for a `models.DenseNetSpec`."""
  try:
    import torchvision
    return torchvision.models.DenseNet(spec.growth_rate, spec.block_config,
                                       spec.num_init_features, spec.bn_size).features
  except ImportError:
    pass
  c = spec.num_init_features
  children = OrderedDict(conv0=nn.Conv2d(3, c, 7, 2, 3, bias=False), norm0=nn.BatchNorm2d(c),
                         relu0=nn.ReLU(), pool0=nn.MaxPool2d(3, 2, 1))
  for i, n in enumerate(spec.block_config):
    children[f"denseblock{i + 1}"] = DenseBlock(n, c, spec.growth_rate, spec.bn_size)
    c += n * spec.growth_rate
    if i != len(spec.block_config) - 1:
      children[f"transition{i + 1}"] = nn.Sequential(OrderedDict(
          norm=nn.BatchNorm2d(c), relu=nn.ReLU(), conv=nn.Conv2d(c, c // 2, 1, bias=False),
          pool=nn.AvgPool2d(2, 2)))
      c //= 2
  children["norm5"] = nn.BatchNorm2d(c)
  return nn.Sequential(children)


def _stream(spec, num_blocks):
  """Official stream: the first children of `features`, up to transition<num_blocks>
  (`features.children()[0:8]` for the paper's 2 blocks)."""
  return nn.Sequential(*list(densenet_features(spec).children())[:2 * num_blocks + 4])


def _embed(stream, x):
  return torch.sigmoid(stream(x).mean(dim=(2, 3)))  # GAP, then sigmoid (as published)


class TwoStream(nn.Module):
  """The official MultiStreamDenseNet's structure and forward."""

  def __init__(self, spec, num_blocks, channels):
    super().__init__()
    self.enc_rgb = _stream(spec, num_blocks)
    self.enc_f = _stream(spec, num_blocks)
    self.linear = nn.Linear(2 * channels, 1)
    self.linear_rgb = nn.Linear(channels, 1)
    self.linear_f = nn.Linear(channels, 1)

  def forward(self, rgb, freq):
    e_rgb, e_f = _embed(self.enc_rgb, rgb), _embed(self.enc_f, freq)
    joint = torch.sigmoid(self.linear(torch.cat([e_rgb, e_f], 1)))
    return joint[:, 0], torch.sigmoid(self.linear_rgb(e_rgb))[:, 0], torch.sigmoid(
        self.linear_f(e_f))[:, 0]


class OneStream(nn.Module):
  """The official OneStreamDenseNet's structure and forward."""

  def __init__(self, spec, num_blocks, channels):
    super().__init__()
    self.enc_rgb = _stream(spec, num_blocks)
    self.linear_rgb = nn.Linear(channels, 1)

  def forward(self, x):
    return torch.sigmoid(self.linear_rgb(_embed(self.enc_rgb, x)))[:, 0]


def randomize(model, calibration_inputs, seed=0, head_scale=30.0):
  """Random weights and non-trivial BatchNorm running statistics, then eval mode.

  BN affine parameters are random; running stats are the statistics of one
  train-mode pass over `calibration_inputs` (so eval-mode BN keeps activations
  in range through deep streams). Head weights are large and their biases
  centre the logits on the calibration images, so probabilities spread over
  (0, 1) without saturating and the comparison is sensitive.
  """
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


def official_spectrum(image: np.ndarray) -> np.ndarray:
  """The official `rgb_to_fft_tensor_filter_with_percentile` on an HWC uint8 image (CHW out)."""
  x = image.astype(np.float32) / 255.0
  out = np.empty_like(x)
  for c in range(3):
    f = np.log(np.abs(np.fft.fft2(x[:, :, c])) + 1e-3)
    lo, hi = np.percentile(f, 5), np.percentile(f, 95)
    f = np.clip(((f - lo) / (hi - lo) - 0.5) * 2, -1, 1)
    out[:, :, c] = np.fft.fftshift(f)
  return out.transpose(2, 0, 1)


def official_inputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(rgb, spectrum) NCHW float32 inputs of the official test script (aligned mode)."""
  rgb = ((images.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2)
  freq = np.stack([official_spectrum(im) for im in images])
  return np.ascontiguousarray(rgb, np.float32), freq
