"""Bad inputs to the head fail with errors that name the input and what was expected; an
out-of-range embodiment id under jit (where values cannot be checked) poisons only its row."""

import jax
import numpy as np
import pytest

import gr00t_reference as ref_lib
from roboalign_jax.models import action_head


@pytest.fixture(scope="module")
def head_params():
  config = action_head.config_from_variant("tiny", dit_num_layers=2, vl_num_layers=1)
  cfg = config.to_gr00t_dict()
  return action_head.load_gr00t(ref_lib.write_checkpoint(ref_lib.tmp_dir("gr00t_inputs_"),
                                                         ref_lib.random_reference(cfg, seed=4), cfg))


def _good(config, batch=2, tokens=3):
  return (np.zeros((batch, tokens, config.feature_dim), np.float32),
          np.zeros((batch, 1, config.max_state_dim), np.float32), np.array([0, 2][:batch]))


def test_wrong_feature_width(head_params):
  head, params = head_params
  _, state, ids = _good(head.config)
  vl = np.zeros((2, 3, 3584), np.float32)
  with pytest.raises(ValueError, match=r"vl_features: expected float \[B, T, 32\], got shape \(2, 3, 3584\).*"
                                       r"backbone_feature_dim"):
    action_head.sample(head, params, vl, state, ids, rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"vl_features: expected float \[B, T, 32\]"):
    action_head.sample(head, params, vl[0], state, ids, rng=jax.random.key(0))


def test_wrong_state_width(head_params):
  head, params = head_params
  vl, _, ids = _good(head.config)
  with pytest.raises(ValueError, match=r"state: expected float \[B=2, S, max_state_dim=9\].*got shape \(2, 1, 8\)"):
    action_head.sample(head, params, vl, np.zeros((2, 1, 8), np.float32), ids, rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"state: expected float \[B=2, S, max_state_dim=9\].*got shape \(2, 9\)"):
    action_head.sample(head, params, vl, np.zeros((2, 9), np.float32), ids, rng=jax.random.key(0))


def test_embodiment_id_out_of_range(head_params):
  head, params = head_params
  vl, state, _ = _good(head.config)
  for bad in ([0, 3], [-1, 0]):
    with pytest.raises(ValueError,
                       match=r"embodiment_id: values \[-?\d\] outside \[0, 3\) \(max_num_embodiments = 3\)"):
      action_head.sample(head, params, vl, state, np.array(bad), rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"embodiment_id: expected int \[B=2\], got shape \(3,\)"):
    action_head.sample(head, params, vl, state, np.array([0, 1, 2]), rng=jax.random.key(0))
  with pytest.raises(ValueError, match="embodiment_id: expected an integer array, got dtype float32"):
    action_head.sample(head, params, vl, state, np.array([0.0, 1.0], np.float32), rng=jax.random.key(0))
  actions = np.zeros((2, head.config.action_horizon, head.config.action_dim), np.float32)
  with pytest.raises(ValueError, match=r"embodiment_id: values \[7\] outside \[0, 3\)"):
    action_head.flow_matching_loss(head, params, vl, state, actions, actions + 1, np.array([7, 0]),
                                   rng=jax.random.key(0))


def test_out_of_range_id_under_jit_poisons_its_row(head_params):
  head, params = head_params
  vl, state, _ = _good(head.config)
  noise = np.ones((2, head.config.action_horizon, head.config.action_dim), np.float32)
  run = jax.jit(lambda ids: action_head.sample(head, params, vl, state, ids, noise=noise))
  for bad in (3, -1):
    out = np.asarray(run(np.array([1, bad])))
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all(), bad


def test_wrong_noise_actions_mask_and_vl_mask(head_params):
  head, params = head_params
  c = head.config
  vl, state, ids = _good(c)
  with pytest.raises(ValueError,
                     match=r"noise: expected \[B, action_horizon, action_dim\] = \[2, 6, 7\], got \(2, 6, 8\)"):
    action_head.sample(head, params, vl, state, ids, noise=np.zeros((2, 6, 8), np.float32))
  with pytest.raises(ValueError, match="sample: pass noise .* or an rng"):
    action_head.sample(head, params, vl, state, ids)
  with pytest.raises(ValueError, match=r"vl_mask: expected bool \[B, T\] = \[2, 3\]"):
    action_head.sample(head, params, vl, state, ids, rng=jax.random.key(0), vl_mask=np.ones((2, 4), bool))
  actions = np.zeros((2, c.action_horizon, c.action_dim), np.float32)
  with pytest.raises(ValueError, match=r"actions: expected \[B, action_horizon, action_dim\] = \[2, 6, 7\]"):
    action_head.flow_matching_loss(head, params, vl, state, actions[:, :5], actions, ids, rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"action_mask: expected .* = \[2, 6, 7\], got \(2, 6, 1\)"):
    action_head.flow_matching_loss(head, params, vl, state, actions, actions[..., :1], ids, rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"t: expected f32 \[B=2\]"):
    action_head.flow_matching_loss(head, params, vl, state, actions, actions, ids, rng=jax.random.key(0),
                                   t=np.zeros((3,), np.float32))
  with pytest.raises(ValueError, match="rng is required"):
    action_head.flow_matching_loss(head, params, vl, state, actions, actions, ids, rng=None)
