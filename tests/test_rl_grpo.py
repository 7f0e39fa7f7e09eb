"""GRPO: group advantages, the clipped policy loss with dual clip and low_var_kl, and
token_logprobs, each checked (value and gradient) against a float64 NumPy reference written
case by case from the formulas in DESIGN.md §3 (GRPO)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from roboalign_jax.rl import grpo

CFG = grpo.GRPOLossConfig()


# ---- float64 references -------------------------------------------------------------------------
def ref_advantages(rewards, g, eps=1e-6):
  r = np.asarray(rewards, np.float64).reshape(-1, g)
  if g == 1:
    return np.zeros(r.size)
  return ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + eps)).reshape(-1)


def ref_loss(logp, old, ref, adv, mask, cfg):
  """(loss, d loss / d logp, per-token case flags), written per token and per case."""
  logp, old, ref, mask = (np.asarray(a, np.float64) for a in (logp, old, ref, mask))
  adv = np.asarray(adv, np.float64)
  n, t = logp.shape
  lo, hi = math.log(1 - cfg.clip_low), math.log(1 + cfg.clip_high)
  pg, g_pg = np.zeros((n, t)), np.zeros((n, t))
  kl, g_kl = np.zeros((n, t)), np.zeros((n, t))
  flags = {k: np.zeros((n, t), bool) for k in ("upper", "lower", "dual")}
  ratio = np.zeros((n, t))
  for i in range(n):
    a = adv[i]
    for j in range(t):
      d = logp[i, j] - old[i, j]
      r = math.exp(min(max(d, -20.0), 20.0))
      dr = r if -20 < d < 20 else 0.0  # d ratio / d logp
      ratio[i, j] = r
      if a > 0 and d > hi:          # ratio above 1 + clip_high: constant, no gradient
        pg[i, j], flags["upper"][i, j] = -a * (1 + cfg.clip_high), True
      elif a < 0 and d < lo:        # ratio below 1 - clip_low: constant
        pg[i, j], flags["lower"][i, j] = -a * (1 - cfg.clip_low), True
      elif a < 0 and r > cfg.clip_dual:  # dual clip: loss bounded by -A * c
        pg[i, j], flags["dual"][i, j] = -a * cfg.clip_dual, True
      else:
        pg[i, j], g_pg[i, j] = -a * r, -a * dr
      x = ref[i, j] - logp[i, j]
      xc = min(max(x, -20.0), 20.0)
      k = math.exp(xc) - xc - 1
      if k > 10:
        kl[i, j] = 10.0
      else:
        kl[i, j] = k
        g_kl[i, j] = -(math.exp(xc) - 1) if -20 < x < 20 else 0.0
  count = mask.sum()
  loss = (mask * (pg + cfg.kl_coef * kl)).sum() / count
  grad = mask * (g_pg + cfg.kl_coef * g_kl) / count
  means = dict(pg_loss=(mask * pg).sum() / count, kl=(mask * kl).sum() / count,
               entropy=(mask * -logp).sum() / count, ratio=(mask * ratio).sum() / count,
               ppo_kl=(mask * (old - logp)).sum() / count,
               **{f"clip_frac_{k}": (mask * v).sum() / count for k, v in flags.items()})
  return loss, grad, means


def random_batch(seed, n=12, t=40):
  """Inputs that hit every case: in-range, clipped above/below, dual-clipped, |log ratio| > 20,
  KL past its clamp and past the log-ratio clamp, masked tokens, and a zero advantage."""
  rng = np.random.default_rng(seed)
  logp = rng.uniform(-6, -0.05, (n, t))
  delta = rng.choice([rng.normal(0, 0.1), 0], (n, t)) + rng.normal(0, 0.6, (n, t))
  delta[:, :3] = [2.0, -2.0, 25.0]   # ratio e^2 > 3 (dual when A < 0), e^-2, and past the clamp
  delta[:, 3] = -25.0
  old = logp - delta
  ref = logp + rng.normal(0, 1.0, (n, t))
  ref[:, 4] = logp[:, 4] + 3.0     # kl = e^3 - 4 > 10: clamped
  ref[:, 5] = logp[:, 5] + 30.0    # past the log-ratio clamp
  ref[:, 6] = logp[:, 6] - 30.0
  adv = rng.normal(0, 1, n)
  adv[0] = 0.0
  mask = rng.uniform(size=(n, t)) < 0.8
  mask[:, :7] = True
  mask[-1] = False  # a fully padded row
  return logp, old, ref, adv, mask


# ---- group advantages ---------------------------------------------------------------------------
@pytest.mark.parametrize("g", [2, 5, 8])
def test_group_advantages_match_reference(g):
  rng = np.random.default_rng(g)
  rewards = rng.uniform(0, 1, 6 * g).astype(np.float32)
  rewards[:g] = 0.5  # an all-equal group: advantages 0, not NaN
  got = np.asarray(grpo.group_advantages(rewards, g))
  want = ref_advantages(rewards, g)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got[:g], 0.0)
  # Groups are consecutive samples: per-group means are zero, stds one (up to eps).
  grouped = got.reshape(-1, g)[1:]
  np.testing.assert_allclose(grouped.mean(1), 0, atol=1e-5)
  np.testing.assert_allclose(grouped.std(1, ddof=1), 1, atol=1e-4)
  jitted = jax.jit(grpo.group_advantages, static_argnums=1)(jnp.asarray(rewards), g)
  np.testing.assert_allclose(np.asarray(jitted), got, rtol=1e-6, atol=1e-7)


def test_group_advantages_group_of_one_and_errors():
  np.testing.assert_array_equal(np.asarray(grpo.group_advantages(np.array([0.3, 1.0, 0.0]), 1)), [0, 0, 0])
  with pytest.raises(ValueError, match="do not split into groups of 4"):
    grpo.group_advantages(np.zeros(10), 4)
  with pytest.raises(ValueError, match="positive int"):
    grpo.group_advantages(np.zeros(10), 0)
  with pytest.raises(ValueError, match=r"float \[B\*G\]"):
    grpo.group_advantages(np.zeros((2, 5)), 5)
  # Integer rewards are promoted, not truncated.
  np.testing.assert_allclose(np.asarray(grpo.group_advantages(np.array([0, 1]), 2)),
                             ref_advantages([0, 1], 2), rtol=1e-6)


# ---- policy loss --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_loss_value_and_gradient_match_reference(seed):
  logp, old, ref, adv, mask = random_batch(seed)
  want_loss, want_grad, want_metrics = ref_loss(logp, old, ref, adv, mask, CFG)
  # Every case is present in the data.
  assert want_metrics["clip_frac_upper"] > 0 and want_metrics["clip_frac_lower"] > 0
  assert want_metrics["clip_frac_dual"] > 0

  f32 = lambda a: jnp.asarray(a, jnp.float32)

  def loss_fn(lp):
    return grpo.policy_loss(lp, f32(old), f32(ref), f32(adv), jnp.asarray(mask), CFG)

  (loss, metrics), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(f32(logp))
  # float32 log-probs of magnitude ~6 carry ~5e-7 absolute error into exp(d).
  assert abs(float(loss) - want_loss) <= 1e-5 * max(1.0, abs(want_loss))
  grad = np.asarray(grad, np.float64)
  scale = np.abs(want_grad).max()
  np.testing.assert_allclose(grad, want_grad, atol=2e-5 * scale)
  assert np.all(grad[~mask] == 0)
  for k, v in want_metrics.items():
    assert float(metrics[k]) == pytest.approx(v, rel=1e-4, abs=1e-6), k
  assert float(metrics["loss"]) == pytest.approx(float(loss))


def test_policy_loss_matches_reference_in_float64_exactly():
  logp, old, ref, adv, mask = random_batch(7, n=4, t=16)
  want_loss, want_grad, _ = ref_loss(logp, old, ref, adv, mask, CFG)
  with jax.enable_x64(True):
    loss, grad = jax.value_and_grad(lambda lp: grpo.policy_loss(lp, old, ref, adv, mask, CFG)[0])(
        jnp.asarray(logp, jnp.float64))
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-10, atol=1e-14)


def test_low_var_kl_clamps():
  logp = jnp.zeros(6)
  ref = jnp.asarray([0.0, 1.0, -1.0, 2.0, 3.0, 30.0])
  kl = np.asarray(grpo.low_var_kl(logp, ref))
  x = np.asarray(ref, np.float64)
  np.testing.assert_allclose(kl[:4], np.exp(x[:4]) - x[:4] - 1, rtol=1e-6)
  assert kl[4] == 10.0 and kl[5] == 10.0  # e^3 - 4 = 16.1 -> 10
  grads = np.asarray(jax.grad(lambda lp: grpo.low_var_kl(lp, ref).sum())(logp))
  np.testing.assert_allclose(grads[:4], -(np.exp(x[:4]) - 1), rtol=1e-6)
  np.testing.assert_array_equal(grads[4:], 0.0)
  assert float(grpo.low_var_kl(jnp.zeros(()), jnp.asarray(-40.0))) == 10.0  # e^-20 + 19 -> 10


def test_policy_loss_on_policy_gradient_is_reinforce():
  # At old == current (first update of a rollout) every ratio is 1: the gradient is -A / count.
  rng = np.random.default_rng(3)
  logp = jnp.asarray(rng.uniform(-3, -0.1, (4, 5)), jnp.float32)
  adv = jnp.asarray([1.0, -1.0, 0.5, 2.0])
  mask = jnp.ones((4, 5), bool)
  cfg = grpo.GRPOLossConfig(kl_coef=0.0)
  grad = jax.grad(lambda lp: grpo.policy_loss(lp, logp, None, adv, mask, cfg)[0])(logp)
  np.testing.assert_allclose(np.asarray(grad), -np.broadcast_to(np.asarray(adv)[:, None], (4, 5)) / 20, rtol=1e-6)
  _, metrics = grpo.policy_loss(logp, logp, None, adv, mask, cfg)
  assert float(metrics["ratio"]) == 1.0 and float(metrics["kl"]) == 0.0
  assert float(metrics["clip_frac_upper"]) == 0.0


def test_policy_loss_config_forms_and_errors():
  logp, old, ref, adv, mask = (jnp.asarray(a, jnp.float32) for a in random_batch(0, n=3, t=8))
  mask = mask.astype(bool)
  cd = ml_collections.ConfigDict(dict(clip_low=0.2, clip_high=0.3, clip_dual=3.0, kl_coef=1e-2, lr=1e-6))
  a, _ = grpo.policy_loss(logp, old, ref, adv, mask, CFG)
  b, _ = grpo.policy_loss(logp, old, ref, adv, mask, cd)
  assert float(a) == float(b)
  all_padding, _ = grpo.policy_loss(logp, old, ref, adv, jnp.zeros_like(mask), CFG)
  assert grpo.policy_loss(logp.astype(jnp.bfloat16), old, ref, adv, mask, CFG)[0].dtype == jnp.float32
  assert float(all_padding) == 0.0
  with pytest.raises(ValueError, match="no field 'clip_dual'"):
    grpo.policy_loss(logp, old, ref, adv, mask, ml_collections.ConfigDict(dict(clip_low=0.2, clip_high=0.3,
                                                                               kl_coef=0.0)))
  with pytest.raises(ValueError, match="clip_low must be in"):
    grpo.policy_loss(logp, old, ref, adv, mask, grpo.GRPOLossConfig(clip_low=1.0))
  with pytest.raises(ValueError, match="clip_dual must be > 1"):
    grpo.policy_loss(logp, old, ref, adv, mask, grpo.GRPOLossConfig(clip_dual=0.5))
  with pytest.raises(ValueError, match="ref_logp is None"):
    grpo.policy_loss(logp, old, None, adv, mask, CFG)
  with pytest.raises(ValueError, match="old_logp must have"):
    grpo.policy_loss(logp, old[:, :-1], ref, adv, mask, CFG)
  with pytest.raises(ValueError, match="advantages must be"):
    grpo.policy_loss(logp, old, ref, adv[:, None] * jnp.ones_like(logp), mask, CFG)


# ---- token log-probs ----------------------------------------------------------------------------
def test_token_logprobs_match_reference():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (2, 5, 33)).astype(np.float32)
  tokens = rng.integers(0, 33, (2, 5))

  def ref(temp):
    z = logits.astype(np.float64) / temp
    z = z - z.max(-1, keepdims=True)
    lsm = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(lsm, tokens[..., None], -1)[..., 0]

  for temp in (1.0, 0.7, 1.5):
    got = np.asarray(jax.jit(grpo.token_logprobs)(logits, tokens, temp))
    np.testing.assert_allclose(got, ref(temp), atol=2e-6)
  # temperature 0 (greedy) scores under the untempered logits.
  np.testing.assert_allclose(np.asarray(grpo.token_logprobs(logits, tokens, 0.0)), ref(1.0), atol=2e-6)
  with pytest.raises(ValueError, match="tokens' shape"):
    grpo.token_logprobs(logits, tokens[:, :-1])
