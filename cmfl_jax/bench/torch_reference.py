"""The official architecture and training step in PyTorch (optional dependency).

A faithful local re-implementation, for same-run speed comparisons
(`cmfl_jax.benchmark --torch`) and weight-conversion parity tests; torchvision
is not needed. Module names match torchvision's DenseNet (`features.conv0`,
`features.denseblock1.denselayer1.norm1`, ...) and the official
MultiStreamDenseNet / OneStreamDenseNet (`enc_rgb.4.denselayer1...`,
`linear`, `linear_rgb`, `linear_f`), so state dicts are interchangeable.
The step mirrors the official training: probabilities out of every head,
BCE / CMFL on probabilities, `torch.optim.Adam(lr, weight_decay)`.
"""

from __future__ import annotations

import collections
from typing import Sequence

import torch
from torch import nn

from cmfl_jax.models.densenet import DenseNetSpec


class DenseLayer(nn.Module):

  def __init__(self, cin: int, growth: int, bn_size: int):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(cin)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(bn_size * growth)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

  def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
    x = torch.cat(features, 1)  # torchvision concatenates inside each layer
    return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):

  def __init__(self, num_layers: int, cin: int, growth: int, bn_size: int):
    super().__init__({f"denselayer{i + 1}": DenseLayer(cin + i * growth, growth, bn_size)
                      for i in range(num_layers)})

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    features = [x]
    for layer in self.values():
      features.append(layer(features))
    return torch.cat(features, 1)


def densenet_features(spec: DenseNetSpec) -> nn.Sequential:
  """torchvision's `DenseNet.features` for `spec` (all blocks, with norm5)."""
  c = spec.num_init_features
  mods: list[tuple[str, nn.Module]] = [
      ("conv0", nn.Conv2d(3, c, 7, stride=2, padding=3, bias=False)),
      ("norm0", nn.BatchNorm2d(c)), ("relu0", nn.ReLU(inplace=True)),
      ("pool0", nn.MaxPool2d(3, stride=2, padding=1))]
  for i, n in enumerate(spec.block_config):
    mods.append((f"denseblock{i + 1}", DenseBlock(n, c, spec.growth_rate, spec.bn_size)))
    c += n * spec.growth_rate
    if i != len(spec.block_config) - 1:
      mods.append((f"transition{i + 1}", nn.Sequential(collections.OrderedDict([
          ("norm", nn.BatchNorm2d(c)), ("relu", nn.ReLU(inplace=True)),
          ("conv", nn.Conv2d(c, c // 2, 1, bias=False)), ("pool", nn.AvgPool2d(2, 2))]))))
      c //= 2
  mods.append(("norm5", nn.BatchNorm2d(c)))
  return nn.Sequential(collections.OrderedDict(mods))


def _stream(spec: DenseNetSpec, num_blocks: int) -> tuple[nn.Sequential, int]:
  """The official truncation: children [0:4 + 2 * num_blocks] of `features`."""
  stream = nn.Sequential(*list(densenet_features(spec).children())[:4 + 2 * num_blocks])
  return stream, spec.channels_after(num_blocks)


def _embed(stream: nn.Module, x: torch.Tensor, c: int) -> torch.Tensor:
  return torch.sigmoid(stream(x).mean((2, 3)).view(-1, c))


class MultiStreamDenseNet(nn.Module):
  """Official two_stream model; forward returns P(real) of (joint, rgb, freq)."""

  def __init__(self, spec: DenseNetSpec, num_blocks: int = 2):
    super().__init__()
    self.enc_rgb, c = _stream(spec, num_blocks)
    self.enc_f, _ = _stream(spec, num_blocks)
    self.linear = nn.Linear(2 * c, 1)
    self.linear_rgb = nn.Linear(c, 1)
    self.linear_f = nn.Linear(c, 1)
    self.channels = c

  def forward(self, rgb: torch.Tensor, freq: torch.Tensor) -> Sequence[torch.Tensor]:
    g_rgb = _embed(self.enc_rgb, rgb, self.channels)
    g_f = _embed(self.enc_f, freq, self.channels)
    return (torch.sigmoid(self.linear(torch.cat([g_rgb, g_f], 1))),
            torch.sigmoid(self.linear_rgb(g_rgb)), torch.sigmoid(self.linear_f(g_f)))


class OneStreamDenseNet(nn.Module):
  """Official one_stream baseline; forward returns (P(real),)."""

  def __init__(self, spec: DenseNetSpec, num_blocks: int = 2):
    super().__init__()
    self.enc_rgb, self.channels = _stream(spec, num_blocks)
    self.linear_rgb = nn.Linear(self.channels, 1)

  def forward(self, x: torch.Tensor) -> Sequence[torch.Tensor]:
    return (torch.sigmoid(self.linear_rgb(_embed(self.enc_rgb, x, self.channels))),)


def cmfl(p_a: torch.Tensor, p_b: torch.Tensor, y: torch.Tensor, alpha: float = 1.0,
         gamma: float = 3.0, eps: float = 1e-9) -> torch.Tensor:
  """Cross Modal Focal Loss on probabilities (REFERENCE.md formula)."""
  bce = nn.functional.binary_cross_entropy
  bce_a, bce_b = bce(p_a, y, reduction="none"), bce(p_b, y, reduction="none")
  pt_a, pt_b = torch.exp(-bce_a), torch.exp(-bce_b)
  w_a = (pt_b + eps) * (2 * pt_a * pt_b) / (pt_a + pt_b + eps)
  w_b = (pt_a + eps) * (2 * pt_a * pt_b) / (pt_a + pt_b + eps)
  return (0.5 * torch.mean(alpha * (1 - w_a) ** gamma * bce_a)
          + 0.5 * torch.mean(alpha * (1 - w_b) ** gamma * bce_b))


def train_step_fn(model: nn.Module, lr: float = 1e-4, weight_decay: float = 1e-5,
                  autocast_dtype: torch.dtype | None = None):
  """One official training step (forward, loss, backward, Adam with coupled L2).

  With `autocast_dtype` the forward runs under `torch.autocast` (mixed
  precision; the loss stays float32, as autocast requires for BCE).
  """
  opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
  bce = nn.functional.binary_cross_entropy
  two_stream = isinstance(model, MultiStreamDenseNet)

  def step(inputs: Sequence[torch.Tensor], y: torch.Tensor) -> float:
    model.train()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(y.device.type, autocast_dtype, enabled=autocast_dtype is not None):
      out = model(*inputs)
    out = [o.float().view(-1) for o in out]
    loss = 0.5 * cmfl(out[1], out[2], y) + 0.5 * bce(out[0], y) if two_stream else bce(out[0], y)
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step
