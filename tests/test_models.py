"""DenseNet streams and detectors: shapes, parameter counts, modes, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cmfl_jax import backend, models
from cmfl_jax.models import densenet, kernels

def run(model, *args):
  """Calls a module under nnx.jit (eager op-by-op dispatch is slow on 2 cores)."""
  return nnx.jit(lambda m, *a: m(*a))(model, *args)


TINY = models.DenseNetSpec(growth_rate=4, block_config=(2, 3, 2), num_init_features=8, bn_size=2)

# torchvision densenet161 `features[0:8]` (conv0 .. transition2), counted by
# hand from torchvision's layer definitions: weights + BN affine, no buffers.
DENSENET161_STREAM_PARAMS = 3_198_144


def torchvision_style_count(spec: models.DenseNetSpec, num_blocks: int) -> int:
  """Independent count of a torchvision DenseNet prefix's parameters."""
  g, width = spec.growth_rate, spec.bn_size * spec.growth_rate
  c = spec.num_init_features
  total = 3 * c * 49 + 2 * c
  for i in range(num_blocks):
    for j in range(spec.block_config[i]):
      cin = c + j * g
      total += 2 * cin + cin * width + 2 * width + width * g * 9
    c += spec.block_config[i] * g
    if i != len(spec.block_config) - 1:
      total += 2 * c + c * (c // 2)
      c //= 2
    else:
      total += 2 * c  # norm5
  return total


def test_paper_stream_parameter_count_and_shapes_abstractly():
  model = nnx.eval_shape(lambda: models.create_model(
      {"arch": "two_stream", "backbone": "densenet161", "num_blocks": 2}, rngs=nnx.Rngs(0)))
  assert models.count_params(model.rgb_stream) == DENSENET161_STREAM_PARAMS
  assert torchvision_style_count(densenet.DENSENET_PRESETS["densenet161"], 2) == DENSENET161_STREAM_PARAMS
  heads = (384 + 1) * 2 + (768 + 1)
  assert models.count_params(model) == 2 * DENSENET161_STREAM_PARAMS + heads
  graphdef, state = nnx.split(model)

  def apply(state, x):
    return nnx.merge(graphdef, state)(x)

  out = jax.eval_shape(apply, state, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.uint8))
  assert {k: v.shape for k, v in out.items()} == {"joint": (2,), "rgb": (2,), "freq": (2,)}
  feats = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).rgb_stream(x), state,
                         jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  assert feats.shape == (2, 14, 14, 384)


@pytest.mark.parametrize("name", sorted(densenet.DENSENET_PRESETS))
def test_presets_match_torchvision_counts(name):
  spec = densenet.DENSENET_PRESETS[name]
  for num_blocks in (2,) if name != "densenet121" else (2, 4):
    stream = nnx.eval_shape(lambda: models.DenseNet(spec, num_blocks, rngs=nnx.Rngs(0)))
    assert models.count_params(stream) == torchvision_style_count(spec, num_blocks)
    assert stream.out_features == spec.channels_after(num_blocks)
  # Known totals of torchvision's full feature extractors (classifier excluded).
  known = {"densenet121": 6_953_856, "densenet161": 26_472_000,
           "densenet169": 12_484_480, "densenet201": 18_092_928}
  assert torchvision_style_count(spec, len(spec.block_config)) == known[name]


@pytest.mark.parametrize("num_blocks", [1, 2, 3])
def test_densenet_output_shapes(num_blocks):
  stream = models.DenseNet(TINY, num_blocks, rngs=nnx.Rngs(0))
  y = nnx.jit(lambda m, x: m(x))(stream, jnp.ones((2, 32, 32, 3)))
  spatial = {1: 4, 2: 2, 3: 2}[num_blocks]  # /4 stem, /2 per transition (none after last)
  assert y.shape == (2, spatial, spatial, TINY.channels_after(num_blocks))
  if num_blocks == 3:
    assert np.all(np.asarray(y) >= 0)  # norm5 + ReLU


def test_bad_num_blocks():
  with pytest.raises(ValueError, match="num_blocks"):
    models.DenseNet(TINY, 4, rngs=nnx.Rngs(0))


def tiny_config(**kw):
  cfg = {"arch": "two_stream", "backbone": "densenet121", "growth_rate": 4,
         "block_config": (2, 2), "num_init_features": 8, "bn_size": 2, "num_blocks": 2}
  cfg.update(kw)
  return cfg


def test_two_stream_heads_follow_published_wiring():
  model = models.create_model(tiny_config(), rngs=nnx.Rngs(0))
  model.eval()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  out = run(model, images)
  # Recompute the heads by hand from the streams: GAP -> sigmoid -> linear.
  from cmfl_jax.models import spectrum
  e_rgb = jax.nn.sigmoid(run(model.rgb_stream, spectrum.normalize_rgb(images)).mean((1, 2)))
  e_f = jax.nn.sigmoid(run(model.freq_stream, spectrum.log_spectrum(images)).mean((1, 2)))

  def lin(head, e):
    return (e @ head.linear.kernel[...] + head.linear.bias[...])[:, 0]

  np.testing.assert_allclose(out["rgb"], lin(model.rgb_head, e_rgb), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["freq"], lin(model.freq_head, e_f), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["joint"], lin(model.joint_head, jnp.concatenate([e_rgb, e_f], -1)),
                             rtol=1e-5, atol=1e-6)
  # Streams do not share weights.
  assert not np.allclose(model.rgb_stream.conv0.kernel[...], model.freq_stream.conv0.kernel[...])


@pytest.mark.parametrize("inp", ["rgb", "freq"])
def test_one_stream(inp):
  model = models.create_model(tiny_config(arch="one_stream", input=inp), rngs=nnx.Rngs(0))
  model.eval()
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  out = run(model, images)
  assert set(out) == {"joint"} and out["joint"].shape == (2,)
  from cmfl_jax.models import spectrum
  x = spectrum.normalize_rgb(images) if inp == "rgb" else spectrum.log_spectrum(images)
  direct = nnx.jit(lambda m, x: m.forward_streams(x))(model, x)
  np.testing.assert_allclose(out["joint"], direct["joint"], rtol=1e-5, atol=1e-6)


def test_create_model_errors():
  with pytest.raises(ValueError, match=r"model.arch must be one of .*two_stream"):
    models.create_model(tiny_config(arch="three_stream"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"model.input must be one of .*rgb"):
    models.create_model(tiny_config(arch="one_stream", input="depth"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="preset"):
    models.create_model(tiny_config(backbone="resnet50"), rngs=nnx.Rngs(0))


def test_train_mode_uses_batch_stats_and_updates_running_stats():
  model = models.create_model(tiny_config(), rngs=nnx.Rngs(0))
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  before = np.asarray(model.rgb_stream.norm0.mean[...]).copy()
  model.train()
  train_out = run(model, images)
  after = np.asarray(model.rgb_stream.norm0.mean[...])
  assert not np.allclose(before, after)
  model.eval()
  eval_out = run(model, images)
  assert not np.allclose(train_out["joint"], eval_out["joint"])
  # Eval mode is per-example: a batch of one gives the same score.
  single = run(model, images[:1])
  np.testing.assert_allclose(single["joint"], eval_out["joint"][:1], rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter():
  from cmfl_jax.training import losses
  model = models.create_model(tiny_config(), rngs=nnx.Rngs(0))
  model.train()
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  labels = jnp.asarray([1.0, 0.0, 1.0, 0.0])

  def loss_fn(m):
    return losses.objective("cmfl", m(images), labels)[0]

  grads = nnx.jit(nnx.grad(loss_fn))(model)
  leaves = jax.tree.leaves(grads)
  assert leaves and all(np.all(np.isfinite(g)) for g in leaves)
  assert all(float(jnp.abs(g).sum()) > 0 for g in leaves)


def test_bfloat16_compute_keeps_float32_params():
  model = models.create_model(tiny_config(dtype="bfloat16"), rngs=nnx.Rngs(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  model.eval()
  out = run(model, np.zeros((2, 32, 32, 3), np.uint8))
  assert all(v.dtype == jnp.float32 for v in out.values())


# ---- fast CPU forms of the stem and 1x1 convolutions: same maths as the layers --
@pytest.mark.parametrize("size", [32, 33])
def test_stem_conv_and_its_im2col_kernel_gradient(size):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k1, (2, size, size, 3))
  w = jax.random.normal(k2, (7, 7, 3, 5)) * 0.1
  dy = jax.random.normal(k3, (2, (size + 1) // 2, (size + 1) // 2, 5))
  conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (2, 2), ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(kernels.stem_conv(x, w, 2, 3), conv(x, w), atol=1e-5)
  got = jax.vjp(lambda x, w: kernels.stem_conv(x, w, 2, 3), x, w)[1](dy)
  want = jax.vjp(conv, x, w)[1](dy)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(16, 16), (17, 14)])
def test_max_pool_slices_match_reduce_window(size):
  x = jax.random.normal(jax.random.key(1), (2, *size, 4))  # no ties
  ref = lambda x: nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # noqa
  np.testing.assert_array_equal(kernels.max_pool_3x3_s2(x), ref(x))
  loss = lambda f: jax.grad(lambda x: jnp.sum(f(x) ** 3))(x)  # noqa: E731
  np.testing.assert_allclose(loss(kernels.max_pool_3x3_s2), loss(ref), rtol=1e-6)


def test_max_pool_gradient_goes_to_the_first_maximum_like_pytorch():
  # Overlapping windows and ties (ReLU zeros): PyTorch routes each window's
  # gradient to its first maximal element in row-major order.
  x = np.maximum(np.random.default_rng(0).normal(size=(2, 9, 8, 3)), 0).astype(np.float32)
  x[0, :3, :3, 0] = 1.0
  dy = np.random.default_rng(1).normal(size=(2, 5, 4, 3)).astype(np.float32)
  out, vjp = jax.vjp(kernels.max_pool_3x3_s2, jnp.asarray(x))
  got = np.asarray(vjp(jnp.asarray(dy))[0])
  want = np.zeros_like(x)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  for b, r, c, ch in np.ndindex(dy.shape):
    window = xp[b, 2 * r:2 * r + 3, 2 * c:2 * c + 3, ch]
    i, j = np.unravel_index(np.argmax(window), (3, 3))  # first maximum
    want[b, 2 * r + i - 1, 2 * c + j - 1, ch] += dy[b, r, c, ch]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  torch = pytest.importorskip("torch")
  tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  torch.nn.functional.max_pool2d(tx, 3, 2, 1).backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(got, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out, np.asarray(
      torch.nn.functional.max_pool2d(torch.tensor(x.transpose(0, 3, 1, 2)), 3, 2, 1)
  ).transpose(0, 2, 3, 1))


def test_pointwise_conv_equals_a_1x1_conv_with_the_same_kernel():
  layer = densenet.PointwiseConv(6, 4, dtype=jnp.float32, rngs=nnx.Rngs(0))
  conv = nnx.Conv(6, 4, (1, 1), use_bias=False, rngs=nnx.Rngs(1))
  conv.kernel[...] = layer.kernel[...]
  x = jax.random.normal(jax.random.key(2), (2, 5, 5, 6))
  np.testing.assert_allclose(layer(x), conv(x), atol=1e-6)
  assert layer.kernel.shape == (1, 1, 6, 4)


@pytest.mark.parametrize("shape", [(2, 8, 8, 6, 4), (1, 5, 7, 3, 2), (1, 33, 33, 3, 2)])
def test_conv3x3_matmul_gradients_equal_the_convolution_gradients(shape):
  b, h, w, cin, cout = shape
  k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(k1, (b, h, w, cin))
  kernel = jax.random.normal(k2, (3, 3, cin, cout))
  dy = jax.random.normal(k3, (b, h, w, cout))
  conv = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(kernels.conv3x3(x, kernel), conv(x, kernel), atol=1e-5)
  got = jax.vjp(kernels.conv3x3, x, kernel)[1](dy)
  want = jax.vjp(conv, x, kernel)[1](dy)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_batch_norm_train_matches_autodiff_and_pytorch():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1.5, 2.0, (4, 5, 6, 3)).astype(np.float32))
  dy = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
  scale = jnp.asarray([0.5, 1.0, 2.0])
  bias = jnp.asarray([0.1, -0.2, 0.3])

  def reference(x, scale, bias):  # the textbook formula, differentiated by JAX
    mean, var = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias

  (y, mean, var), vjp = jax.vjp(lambda *a: kernels.batch_norm_train(*a, 1e-5), x, scale, bias)
  want_y, want_vjp = jax.vjp(reference, x, scale, bias)
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
  for got, want in zip(vjp((dy, jnp.zeros_like(mean), jnp.zeros_like(var))), want_vjp(dy)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

  # Module: output and running statistics as torch.nn.BatchNorm2d in training mode.
  bn = densenet.BatchNorm(3, momentum=densenet.BN_MOMENTUM, epsilon=densenet.BN_EPSILON,
                        rngs=nnx.Rngs(0))
  bn.scale[...], bn.bias[...] = scale, bias
  bn.train()
  out = bn(x)
  torch = pytest.importorskip("torch")
  tbn = torch.nn.BatchNorm2d(3)
  with torch.no_grad():
    tbn.weight.copy_(torch.tensor(np.asarray(scale)))
    tbn.bias.copy_(torch.tensor(np.asarray(bias)))
  tout = tbn.train()(torch.tensor(np.asarray(x).transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(out, tout.detach().numpy().transpose(0, 2, 3, 1), atol=1e-5)
  np.testing.assert_allclose(bn.mean[...], tbn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.var[...], tbn.running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_gemm_and_xla_kernels_compute_the_same_function():
  """ops="gemm" (CPU-tuned) and ops="xla" (accelerators) differ only in speed:
  same logits, gradients and BatchNorm updates from the same weights."""
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  labels = jnp.asarray([1.0, 0.0, 1.0, 0.0])
  results = {}
  for ops in ("gemm", "xla"):
    model = models.create_model(tiny_config(ops=ops), rngs=nnx.Rngs(0))
    assert model.rgb_stream.ops == model.rgb_stream.conv0.ops == ops
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, rest=rest, graphdef=graphdef):
      m = nnx.merge(graphdef, p, rest, copy=True)
      logits = m(images)["joint"]
      return jnp.mean(bce_with_logits(logits, labels)), nnx.state(m, nnx.BatchStat)

    (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    results[ops] = (value, grads, stats)
  (v_g, g_g, s_g), (v_x, g_x, s_x) = results["gemm"], results["xla"]
  np.testing.assert_allclose(v_g, v_x, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_g) + jax.tree.leaves(s_g),
                  jax.tree.leaves(g_x) + jax.tree.leaves(s_x)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  with pytest.raises(ValueError, match="ops"):
    backend.kernel_family("cudnn", "cpu")
  assert backend.kernel_family("auto", "cpu") == "gemm"
  assert backend.kernel_family("auto", "gpu") == backend.kernel_family("auto", "tpu") == "xla"


def bce_with_logits(logits, labels):
  return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
