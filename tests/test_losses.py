"""BCE/CMFL from logits vs the probability-space definitions of REFERENCE.md."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmfl_jax.training import losses

ALPHA, GAMMA, MULT, EPS = 1.0, 3.0, 2.0, 1e-9


# ---- float64 transcription of the published (probability-space) formulas --
# Written against an array namespace `xp` so the same text evaluates in NumPy
# (values) and in jax.numpy under x64 (gradients by autodiff of the *reference*,
# which shares no code with the logit-space implementation under test).
def ref_sigmoid(x, xp=np):
  return 1.0 / (1.0 + xp.exp(-x))


def ref_bce(p, y, xp=np):
  return -(y * xp.log(p) + (1 - y) * xp.log(1 - p))


def ref_cmfl(xa, xb, y, xp=np, alpha=ALPHA, gamma=GAMMA, mult=MULT, eps=EPS):
  bce_a, bce_b = ref_bce(ref_sigmoid(xa, xp), y, xp), ref_bce(ref_sigmoid(xb, xp), y, xp)
  pt_a, pt_b = xp.exp(-bce_a), xp.exp(-bce_b)
  w_a = (pt_b + eps) * (mult * pt_a * pt_b) / (pt_a + pt_b + eps)
  w_b = (pt_a + eps) * (mult * pt_a * pt_b) / (pt_a + pt_b + eps)
  return 0.5 * xp.mean(alpha * (1 - w_a) ** gamma * bce_a) + \
      0.5 * xp.mean(alpha * (1 - w_b) ** gamma * bce_b)


def ref_objective(xj, xa, xb, y, xp=np):
  return 0.5 * ref_cmfl(xa, xb, y, xp) + 0.5 * xp.mean(ref_bce(ref_sigmoid(xj, xp), y, xp))


def ref_grad(f, args, argnum):
  """Gradient of the float64 reference formula (needs the x64 fixture)."""
  args = [jnp.asarray(a, jnp.float64) for a in args]
  return np.asarray(jax.grad(lambda *a: f(*a, xp=jnp), argnums=argnum)(*args))


def numeric_grad(f, args, argnum, h=1e-6):
  """Central differences in float64, for moderate logits only (cancellation in
  1 - p makes them useless near saturation)."""
  x = np.array(args[argnum], np.float64)
  g = np.zeros_like(x)
  for i in range(x.size):
    up, dn = x.copy(), x.copy()
    up.flat[i] += h
    dn.flat[i] -= h
    a_up, a_dn = list(args), list(args)
    a_up[argnum], a_dn[argnum] = up, dn
    g.flat[i] = (f(*a_up) - f(*a_dn)) / (2 * h)
  return g


def _cases(seed, n=16):
  rng = np.random.default_rng(seed)
  # Moderate logits plus near-saturated ones (|x| up to 20, where float32
  # sigmoid rounds to 1 and a naive log(1 - p) is -inf), on both classes.
  xa = np.concatenate([rng.normal(0, 3, n), [20.0, -20.0, 17.0, -17.5, 0.0, 9.0]])
  xb = np.concatenate([rng.normal(0, 3, n), [-19.0, 20.0, 16.0, 18.0, -12.0, -9.0]])
  xj = np.concatenate([rng.normal(0, 3, n), [19.5, -19.5, 0.5, -0.5, 15.0, -15.0]])
  y = np.concatenate([rng.integers(0, 2, n), [1, 0, 0, 1, 1, 0]]).astype(np.float64)
  return xj, xa, xb, y


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bce_value_and_grad_float64(x64, seed):
  _, xa, _, y = _cases(seed)
  got = losses.bce(jnp.asarray(xa), jnp.asarray(y))
  mean_bce = lambda x, y, xp=np: xp.mean(ref_bce(ref_sigmoid(x, xp), y, xp))
  np.testing.assert_allclose(got, mean_bce(xa, y), rtol=1e-6)
  g = jax.grad(losses.bce)(jnp.asarray(xa), jnp.asarray(y))
  np.testing.assert_allclose(g, ref_grad(mean_bce, [xa, y], 0), rtol=1e-6, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cmfl_value_and_grads_float64(x64, seed):
  _, xa, xb, y = _cases(seed)
  args = [jnp.asarray(xa), jnp.asarray(xb), jnp.asarray(y)]
  np.testing.assert_allclose(losses.cmfl(*args), ref_cmfl(xa, xb, y), rtol=1e-6)
  ga, gb = jax.grad(losses.cmfl, argnums=(0, 1))(*args)
  np.testing.assert_allclose(ga, ref_grad(ref_cmfl, [xa, xb, y], 0), rtol=1e-6, atol=1e-15)
  np.testing.assert_allclose(gb, ref_grad(ref_cmfl, [xa, xb, y], 1), rtol=1e-6, atol=1e-15)


def test_reference_gradient_agrees_with_finite_differences(x64):
  # Guards the autodiff-of-reference used above, on moderate logits.
  rng = np.random.default_rng(11)
  xa, xb = rng.normal(0, 2, 8), rng.normal(0, 2, 8)
  y = rng.integers(0, 2, 8).astype(np.float64)
  np.testing.assert_allclose(ref_grad(ref_cmfl, [xa, xb, y], 0),
                             numeric_grad(ref_cmfl, [xa, xb, y], 0), rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 3])
def test_cmfl_objective_float64(x64, seed):
  xj, xa, xb, y = _cases(seed)

  def f(xj, xa, xb):
    return losses.objective("cmfl", {"joint": xj, "rgb": xa, "freq": xb}, y)[0]

  args = [jnp.asarray(v) for v in (xj, xa, xb)]
  np.testing.assert_allclose(f(*args), ref_objective(xj, xa, xb, y), rtol=1e-6)
  grads = jax.grad(f, argnums=(0, 1, 2))(*args)
  for i, g in enumerate(grads):
    want = ref_grad(ref_objective, [xj, xa, xb, y], i)
    np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-15)


def test_float32_matches_float64_and_stays_finite():
  xj, xa, xb, y = _cases(5)
  f32 = [jnp.asarray(v, jnp.float32) for v in (xa, xb, y)]
  np.testing.assert_allclose(losses.cmfl(*f32), ref_cmfl(xa, xb, y), rtol=1e-5)
  # Far beyond float32 saturation: values and grads stay finite and exact.
  x = jnp.asarray([100.0, -100.0, 1e4, -1e4], jnp.float32)
  lab = jnp.asarray([0.0, 1.0, 1.0, 0.0])
  np.testing.assert_allclose(losses.bce_per_example(x, lab), [100.0, 100.0, 0.0, 0.0], atol=1e-6)
  g = jax.grad(lambda a, b: losses.cmfl(a, b, lab), argnums=(0, 1))(x, x[::-1])
  assert all(np.all(np.isfinite(gi)) for gi in g)
  assert np.isfinite(losses.cmfl(x, x[::-1], lab))


def test_cmfl_reduces_to_focal_weighting():
  # When both heads are perfectly right, w -> 1 and the loss vanishes; when
  # both are equally unsure (p = 0.5), w = 0.25 * (1 + 2 eps) and the weight
  # is (1 - 0.25)^3 * BCE.
  y = np.ones(4)
  x0 = np.zeros(4)
  np.testing.assert_allclose(losses.cmfl(x0, x0, y), (0.75 ** 3) * np.log(2), rtol=1e-5)
  big = np.full(4, 30.0)
  assert float(losses.cmfl(big, big, y)) < 1e-12


def test_objective_bce_and_errors():
  y = jnp.asarray([1.0, 0.0])
  x = jnp.asarray([2.0, -1.0])
  loss, aux = losses.objective("bce", {"joint": x}, y)
  np.testing.assert_allclose(loss, np.mean(ref_bce(ref_sigmoid(np.array([2.0, -1.0])), np.array([1, 0]))), rtol=1e-6)
  assert set(aux) == {"bce_joint"}
  with pytest.raises(ValueError, match="two_stream"):
    losses.objective("cmfl", {"joint": x}, y)
  with pytest.raises(ValueError, match="unknown objective"):
    losses.objective("focal", {"joint": x}, y)


def test_against_pytorch_official_formula(x64):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  _, xa, xb, y = _cases(7)
  ta = torch.tensor(xa, dtype=torch.float64, requires_grad=True)
  tb = torch.tensor(xb, dtype=torch.float64, requires_grad=True)
  ty = torch.tensor(y, dtype=torch.float64)
  # The official CMFL.forward (sg=False, binary=False) on probabilities.
  pa, pb = torch.sigmoid(ta), torch.sigmoid(tb)
  bce_a = F.binary_cross_entropy(pa, ty, reduction="none")
  bce_b = F.binary_cross_entropy(pb, ty, reduction="none")
  pt_a, pt_b = torch.exp(-bce_a), torch.exp(-bce_b)
  wt_a = ((pt_b + EPS) * (MULT * pt_a * pt_b)) / (pt_a + pt_b + EPS)
  wt_b = ((pt_a + EPS) * (MULT * pt_a * pt_b)) / (pt_a + pt_b + EPS)
  loss = 0.5 * torch.mean(ALPHA * (1 - wt_a) ** GAMMA * bce_a) + \
      0.5 * torch.mean(ALPHA * (1 - wt_b) ** GAMMA * bce_b)
  loss.backward()
  args = [jnp.asarray(xa), jnp.asarray(xb), jnp.asarray(y)]
  np.testing.assert_allclose(losses.cmfl(*args), loss.item(), rtol=1e-6)
  ga, gb = jax.grad(losses.cmfl, argnums=(0, 1))(*args)
  np.testing.assert_allclose(ga, ta.grad.numpy(), rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(gb, tb.grad.numpy(), rtol=1e-6, atol=1e-12)


def test_loss_config_is_typed_once_from_the_config():
  """`config.loss` becomes `LossConfig` at the boundary: the configured values,
  0 attribution weight for configs saved before the attribution head, and a
  one-line error naming the choices for an unknown objective."""
  import ml_collections
  loss = ml_collections.ConfigDict({"objective": "bce", "alpha": 2, "gamma": 1.5,
                                    "multiplier": 3.0, "attribution_weight": 0.25})
  assert losses.LossConfig.from_config(loss) == losses.LossConfig("bce", 2.0, 1.5, 3.0, 0.25)
  del loss["attribution_weight"]
  assert losses.LossConfig.from_config(loss).attribution_weight == 0.0
  with pytest.raises(ValueError, match=r"loss.objective must be one of \('cmfl', 'bce'\)"):
    losses.LossConfig.from_config({"objective": "focal"})
