"""Sampling parity with the public GR00T N1.5 head: a perturbed reference head saved as a GR00T
checkpoint (single or sharded safetensors, with backbone tensors that must be ignored) loads
into ours, and `sample` from the same noise equals the reference's `get_action`."""

import jax
import numpy as np
import pytest
import torch

import gr00t_reference as ref_lib
from roboalign_jax.models import action_head

# Widths that are not powers of two, several embodiments per batch, step counts other than 4,
# and the optional parts of the head switched on and off.
CONFIGS = {
    "odd_widths": dict(action_horizon=5, action_dim=7, max_state_dim=9, hidden_size=20, input_embedding_dim=30,
                       backbone_embedding_dim=18, dit_num_layers=3, dit_num_heads=3, dit_head_dim=10,
                       vl_num_layers=2, vl_num_heads=3, vl_head_dim=6, num_target_vision_tokens=3, max_seq_len=8,
                       max_num_embodiments=5, num_inference_timesteps=3),
    "tiny_7_steps_no_interleave": dict(num_inference_timesteps=7, dit_interleave_self_attention=False),
    "projection_5_steps": dict(backbone_feature_dim=13, num_inference_timesteps=5),
    "no_vlln_no_pos_no_future": dict(use_vlln=False, add_pos_embed=False, num_target_vision_tokens=0,
                                     num_inference_timesteps=2),
}
SHARDS = {"odd_widths": 3, "tiny_7_steps_no_interleave": 1, "projection_5_steps": 2, "no_vlln_no_pos_no_future": 1}


def _inputs(config, batch, tokens, seed):
  rng = np.random.default_rng(seed)
  vl = rng.normal(size=(batch, tokens, config.feature_dim)).astype(np.float32)
  state = rng.normal(size=(batch, 1, config.max_state_dim)).astype(np.float32)
  ids = np.arange(batch) * 2 % config.max_num_embodiments  # several embodiments in one batch
  return vl, state, ids


def _reference_checkpoint(name):
  config = action_head.config_from_variant("tiny", **CONFIGS[name])
  cfg = config.to_gr00t_dict()
  head = ref_lib.random_reference(cfg, seed=len(name))
  extra = {"backbone.eagle_model.language_model.lm_head.weight": torch.randn(11, 5)}  # must be ignored
  projection = None
  if config.has_projection:
    # GR00T applies backbone.eagle_linear to the backbone features before the head.
    projection = torch.nn.Linear(config.backbone_feature_dim, config.backbone_embedding_dim)
    ref_lib.perturb_(projection, seed=7)
    extra.update({f"backbone.eagle_linear.{k}": v for k, v in projection.state_dict().items()})
  out = ref_lib.write_checkpoint(ref_lib.tmp_dir(f"gr00t_{name}_"), head, cfg, shards=SHARDS[name], extra=extra,
                                 project_to_dim=config.backbone_embedding_dim if projection is not None else None)
  return config, head, projection, out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sample_equals_reference_get_action(name):
  config, ref, projection, ckpt = _reference_checkpoint(name)
  head, params = action_head.load_gr00t(ckpt)
  assert head.config == config
  batch, tokens = 3, 7
  vl, state, ids = _inputs(config, batch, tokens, seed=1)
  assert len(set(ids.tolist())) == batch
  ref_vl = vl
  if projection is not None:
    with torch.no_grad():
      ref_vl = projection(torch.as_tensor(vl)).numpy()
  errors = []
  for seed in (0, 1):
    want = ref_lib.reference_get_action(ref, ref_vl, state, ids, seed=seed)
    noise = ref_lib.reference_noise(seed, (batch, config.action_horizon, config.action_dim))
    got = np.asarray(action_head.sample(head, params, vl, state, ids, noise=noise))
    assert got.shape == want.shape == (batch, config.action_horizon, config.action_dim)
    # Compared on the displacement from the shared start, so the noise cannot mask velocity errors.
    errors.append(ref_lib.max_rel_err(got - noise, want - noise))
    assert np.abs(want - noise).max() > 1e-2
  print(f"{name}: max relative error {max(errors):.2e}")
  assert max(errors) < 1e-4


def test_rng_noise_and_explicit_noise_agree():
  config, _, _, ckpt = _reference_checkpoint("tiny_7_steps_no_interleave")
  head, params = action_head.load_gr00t(ckpt)
  vl, state, ids = _inputs(config, 3, 7, seed=3)  # the parity test's shapes: compiled already
  key = jax.random.key(5)
  drawn = action_head.sample(head, params, vl, state, ids, rng=key)
  noise = jax.random.normal(key, (3, config.action_horizon, config.action_dim))
  np.testing.assert_array_equal(np.asarray(drawn), np.asarray(action_head.sample(head, params, vl, state, ids,
                                                                                  noise=noise)))
  other = action_head.sample(head, params, vl, state, ids, rng=jax.random.key(6))
  assert np.abs(np.asarray(other) - np.asarray(drawn)).max() > 1e-3


def test_bf16_checkpoint_loads_as_its_values():
  """Released GR00T weights are bf16 on disk: loading keeps their exact values (in fp32)."""
  config = action_head.config_from_variant("tiny")
  cfg = config.to_gr00t_dict()
  ref = ref_lib.random_reference(cfg, seed=3)
  ckpt = ref_lib.write_checkpoint(ref_lib.tmp_dir("gr00t_bf16_"), ref, cfg, dtype=torch.bfloat16)
  _, params = action_head.load_gr00t(ckpt)
  ours = action_head.checkpoint_io.gr00t_tensors_from_params(params)
  want = {f"action_head.{k}": v.to(torch.bfloat16).float().numpy() for k, v in ref.state_dict().items()}
  assert set(ours) == set(want)
  for k in want:
    np.testing.assert_array_equal(ours[k], want[k], err_msg=k)
