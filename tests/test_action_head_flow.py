"""Flow matching against GR00T: the training loss for given (noise, t) equals the reference
forward's loss, dropout runs only in training, time samples follow (s - Beta(1.5, 1)) / s, the
Euler buckets are GR00T's, and the optional VL padding mask removes padded tokens exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import gr00t_reference as ref_lib
from roboalign_jax.models import action_head

ODD = dict(action_horizon=5, action_dim=7, max_state_dim=9, hidden_size=20, input_embedding_dim=30,
           backbone_embedding_dim=18, dit_num_layers=3, dit_num_heads=3, dit_head_dim=10, vl_num_layers=2,
           vl_num_heads=3, vl_head_dim=6, num_target_vision_tokens=3, max_seq_len=8, max_num_embodiments=4)
# Jitted as a train step would be (eager Flax runs op by op, much slower on CPU).
loss_fn = jax.jit(action_head.flow_matching_loss, static_argnums=0, static_argnames=("deterministic",))
KEY = jax.random.key(0)  # with noise and t given and deterministic=True nothing is drawn from it


@pytest.fixture(scope="module")
def loaded():
  config = action_head.config_from_variant("tiny", **ODD)
  cfg = config.to_gr00t_dict()
  ref = ref_lib.random_reference(cfg, seed=11)
  head, params = action_head.load_gr00t(ref_lib.write_checkpoint(ref_lib.tmp_dir("gr00t_flow_"), ref, cfg))
  return config, ref, head, params


def _batch(config, seed, batch=4, tokens=6):
  rng = np.random.default_rng(seed)
  vl = rng.normal(size=(batch, tokens, config.feature_dim)).astype(np.float32)
  state = rng.normal(size=(batch, 1, config.max_state_dim)).astype(np.float32)
  actions = rng.uniform(-1, 1, size=(batch, config.action_horizon, config.action_dim)).astype(np.float32)
  mask = np.ones_like(actions)
  mask[:, :, 5:] = 0          # padded action dims
  mask[1, 3:] = 0             # a short episode tail
  ids = np.array([3, 0, 1, 3][:batch])
  return vl, state, actions, mask, ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_equals_reference_forward(loaded, seed):
  config, ref, head, params = loaded
  vl, state, actions, mask, ids = _batch(config, seed)
  want, noise, t = ref_lib.reference_loss(ref, vl, state, actions, mask, ids, seed=seed)
  got, metrics = loss_fn(head, params, vl, state, actions, mask, ids, rng=KEY,
                                                deterministic=True, noise=noise, t=t)
  assert abs(float(got) - want) <= 1e-5 * abs(want), (float(got), want)
  again, _ = loss_fn(head, params, vl, state, actions, mask, ids, rng=jax.random.key(seed + 1), deterministic=True,
                     noise=noise, t=t)
  assert float(again) == float(got)  # deterministic: the key changes nothing
  assert float(metrics["loss"]) == float(got)
  np.testing.assert_allclose(float(metrics["t_mean"]), t.mean(), rtol=1e-6)
  # The mask matters: the same prediction scored on every entry gives another number.
  full, _ = loss_fn(head, params, vl, state, actions, np.ones_like(mask), ids, rng=KEY,
                                           deterministic=True, noise=noise, t=t)
  assert abs(float(full) - float(got)) > 1e-3 * float(got)


def test_loss_formula_pieces(loaded):
  """x_t, velocity target and bucket are GR00T's: loss(noise, t) = masked MSE of velocity(x_t, bucket)."""
  config, _, head, params = loaded
  vl, state, actions, mask, ids = _batch(config, 5)
  noise = np.random.default_rng(6).normal(size=actions.shape).astype(np.float32)
  t = np.array([0.0, 0.2499, 0.75, 0.9999], np.float32)
  np.testing.assert_array_equal(np.asarray(action_head.timestep_bucket(jnp.asarray(t), config)), [0, 249, 750, 999])
  x_t = (1 - t[:, None, None]) * noise + t[:, None, None] * actions
  pred = jax.jit(head.apply)({"params": params}, vl, state, x_t, np.floor(t * 1000).astype(np.int32), ids)
  want = np.sum((np.asarray(pred) - (actions - noise)) ** 2 * mask) / mask.sum()
  got, _ = loss_fn(head, params, vl, state, actions, mask, ids, rng=KEY, deterministic=True,
                                          noise=noise, t=t)
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_dropout_only_in_training(loaded):
  config, _, head, params = loaded
  vl, state, actions, mask, ids = _batch(config, 0)
  noise = np.random.default_rng(1).normal(size=actions.shape).astype(np.float32)
  t = np.full((4,), 0.5, np.float32)

  def loss(deterministic, key, h=head):
    return float(loss_fn(h, params, vl, state, actions, mask, ids, rng=key, deterministic=deterministic,
                         noise=noise, t=t)[0])

  k1, k2 = jax.random.key(1), jax.random.key(2)
  eval_loss = loss(True, k1)
  assert eval_loss == loss(True, k2)
  train1, train2 = loss(False, k1), loss(False, k2)
  assert train1 == loss(False, k1)                  # a key fixes the dropout masks
  assert train1 != train2 and train1 != eval_loss   # and different keys give different masks
  # With both dropout rates at 0, training keys change nothing: dropout is the only randomness,
  # and each of the two stacks (DiT, VL self-attention) applies its own.
  for rates, differs in (((0.0, 0.0), False), ((0.2, 0.0), True), ((0.0, 0.2), True)):
    h = action_head.FlowMatchingHead(config.replace(dit_dropout=rates[0], vl_dropout=rates[1]))
    assert (loss(False, k1, h) != loss(False, k2, h)) == differs, rates


def test_time_samples_follow_shifted_beta():
  config = action_head.config_from_variant("tiny")
  s, a, b = config.noise_s, config.noise_beta_alpha, config.noise_beta_beta
  t = np.asarray(action_head.sample_time(jax.random.key(0), 20000, config), np.float64)
  assert t.min() > (s - 1) / s and t.max() < 1.0
  # P(t <= x) = P(u >= s (1 - x)) for u ~ Beta(a, b).
  cdf = lambda x: scipy.stats.beta.sf(s * (1 - x), a, b)
  assert scipy.stats.kstest(t, cdf).pvalue > 1e-3
  # The test has power: uniform t, or Beta without the shift and flip, are rejected.
  assert scipy.stats.kstest(np.random.default_rng(0).uniform(size=20000), cdf).pvalue < 1e-6
  assert scipy.stats.kstest(1 - t, cdf).pvalue < 1e-6
  # t slightly below 0 (u > s) lands in bucket 0, as GR00T's truncation does.
  np.testing.assert_array_equal(np.asarray(action_head.timestep_bucket(jnp.asarray([-0.0005, 0.0, 0.999]), config)),
                                [0, 0, 999])


def test_euler_buckets_are_gr00t_steps():
  base = action_head.config_from_variant("tiny")
  assert action_head.euler_buckets(base.replace(num_inference_timesteps=4)) == [0, 250, 500, 750]
  assert action_head.euler_buckets(base.replace(num_inference_timesteps=3)) == [0, 333, 666]
  assert action_head.euler_buckets(base.replace(num_inference_timesteps=1)) == [0]


def test_vl_mask_removes_padded_tokens(loaded):
  """GR00T attends to every VL token (vl_mask=None). With a mask, a left-padded row gives what the
  row without padding gives, whatever the padding holds; unmasked padding changes the result."""
  config, _, head, params = loaded
  rng = np.random.default_rng(9)
  real = rng.normal(size=(1, 4, config.feature_dim)).astype(np.float32)
  state = rng.normal(size=(1, 1, config.max_state_dim)).astype(np.float32)
  noise = rng.normal(size=(1, config.action_horizon, config.action_dim)).astype(np.float32)
  ids = np.array([2])
  alone = np.asarray(action_head.sample(head, params, real, state, ids, noise=noise))
  # Row 0: 3 padding tokens masked out; row 1: the same tokens with every key allowed.
  padded = np.concatenate([rng.normal(size=(1, 3, config.feature_dim)).astype(np.float32) * 5, real], axis=1)
  mask = np.array([[False] * 3 + [True] * 4, [True] * 7])
  two = lambda x: np.concatenate([x, x])
  out = np.asarray(action_head.sample(head, params, two(padded), two(state), two(ids), noise=two(noise), vl_mask=mask))
  np.testing.assert_allclose(out[0], alone[0], rtol=0, atol=1e-5 * np.abs(alone).max())
  assert np.abs(out[1] - alone[0]).max() > 1e-3
  # The training forward sees the same masking.
  actions = rng.uniform(-1, 1, size=noise.shape).astype(np.float32)
  kw = dict(rng=KEY, deterministic=True, noise=noise, t=np.array([0.3], np.float32))
  l_alone = loss_fn(head, params, real, state, actions, np.ones_like(actions), ids, **kw)[0]
  l_masked = loss_fn(head, params, padded, state, actions, np.ones_like(actions), ids, vl_mask=mask[:1], **kw)[0]
  np.testing.assert_allclose(float(l_masked), float(l_alone), rtol=1e-5)
