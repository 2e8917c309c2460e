"""Op-level timings behind cmfl_jax.models' CPU-friendly layers, against XLA's
own ops and PyTorch (oneDNN) on the same shapes. One JSON line per op/shape.

  python benchmarks/conv_ops.py

Shapes are the paper model's at 64x64 (batch 32) and 224x224 (batch 8).
"""

import json

import jax
import jax.numpy as jnp
import torch
from flax import nnx

from cmfl_jax.models import kernels
from cmfl_jax.bench.timing import timed


def timed_ms(fn) -> float:
  return 1000 * timed(fn, 7)


def xla_conv(stride, pad):
  return lambda x, w: jax.lax.conv_general_dilated(
      x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def compare(name, shape_x, shape_w, ours, xla, torch_fn, wrt=(0, 1)):
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, shape_x)
  w = jax.random.normal(kw, shape_w) * 0.05 if shape_w else None
  args = (x, w) if shape_w else (x,)
  argnums = wrt if shape_w else (0,)
  out = {"op": name, "x": shape_x, "w": shape_w}
  for label, fn in (("cmfl_jax", ours), ("xla", xla)):
    fwd = jax.jit(fn)
    grad = jax.jit(jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a) ** 2), argnums=argnums))
    out[f"{label}_fwd_ms"] = round(timed_ms(lambda: jax.block_until_ready(fwd(*args))), 1)
    out[f"{label}_fwd_bwd_ms"] = round(timed_ms(lambda: jax.block_until_ready(grad(*args))), 1)
  tx = torch.randn(shape_x[0], shape_x[3], shape_x[1], shape_x[2], requires_grad=0 in wrt)
  tw = (torch.randn(shape_w[3], shape_w[2], shape_w[0], shape_w[1]) * 0.05).requires_grad_() \
      if shape_w else None
  targs = (tx, tw) if shape_w else (tx,)

  def t_fwd():
    with torch.no_grad():
      torch_fn(*targs)

  def t_bwd():
    (torch_fn(*targs) ** 2).sum().backward()

  out["torch_fwd_ms"] = round(timed_ms(t_fwd), 1)
  out["torch_fwd_bwd_ms"] = round(timed_ms(t_bwd), 1)
  print(json.dumps(out), flush=True)


def main():
  torch.set_num_threads(2)
  conv2d = torch.nn.functional.conv2d
  for b, h, cin in ((32, 16, 192), (32, 8, 192), (8, 56, 192), (8, 28, 192)):
    compare("conv3x3", (b, h, h, cin), (3, 3, cin, 48), kernels.conv3x3, xla_conv(1, 1),
            lambda x, w: conv2d(x, w, padding=1))
  for b, h, cin in ((32, 16, 288), (8, 56, 288)):
    compare("conv1x1", (b, h, h, cin), (1, 1, cin, 192),
            lambda x, w: (x.reshape(-1, x.shape[-1]) @ w[0, 0]).reshape(*x.shape[:-1], -1),
            xla_conv(1, 0), lambda x, w: conv2d(x, w))
  for b, h in ((32, 64), (8, 224)):
    compare("stem7x7s2", (b, h, h, 3), (7, 7, 3, 96), lambda x, w: kernels.stem_conv(x, w, 2, 3),
            xla_conv(2, 3), lambda x, w: conv2d(x, w, stride=2, padding=3), wrt=(1,))
    compare("maxpool3x3s2", (b, h // 2, h // 2, 96), None, kernels.max_pool_3x3_s2,
            lambda x: nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))),
            lambda x: torch.nn.functional.max_pool2d(x, 3, 2, 1))


if __name__ == "__main__":
  main()
