"""Configs and parameters: the `gr00t_n1_5` variant is the released N1.5 `action_head_cfg`, has
exactly the reference module's tensors (names, shapes, count), GR00T dicts round-trip, and a
fresh init follows GR00T's init distributions."""

import jax
import numpy as np
import pytest
from flax import traverse_util

import gr00t_reference as ref_lib
from roboalign_jax.models import action_head

# The action_head_cfg of the released nvidia/GR00T-N1.5-3B config.json.
RELEASED_N1_5 = {
    "action_dim": 32, "action_horizon": 16, "add_pos_embed": True, "backbone_embedding_dim": 2048,
    "diffusion_model_cfg": {"attention_head_dim": 48, "cross_attention_dim": 2048, "dropout": 0.2,
                            "final_dropout": True, "interleave_self_attention": True, "norm_type": "ada_norm",
                            "num_attention_heads": 32, "num_layers": 16, "output_dim": 1024,
                            "positional_embeddings": None},
    "hidden_size": 1024, "input_embedding_dim": 1536, "max_action_dim": 32, "max_state_dim": 64,
    "model_dtype": "float32", "noise_beta_alpha": 1.5, "noise_beta_beta": 1.0, "noise_s": 0.999,
    "num_inference_timesteps": 4, "num_target_vision_tokens": 32, "num_timestep_buckets": 1000,
    "tune_diffusion_model": True, "tune_projector": True, "use_vlln": True,
    "vl_self_attention_cfg": {"attention_head_dim": 64, "dropout": 0.2, "final_dropout": True,
                              "num_attention_heads": 32, "num_layers": 4, "positional_embeddings": None},
}


def _shapes(config):
  flat = traverse_util.flatten_dict(action_head.abstract_params(action_head.FlowMatchingHead(config)))
  out = {}
  for path, box in flat.items():
    shape = box.value.shape if hasattr(box, "value") else box.shape
    out[action_head.gr00t_name(path)] = shape[::-1] if path[-1] == "kernel" else shape
  return out


def test_gr00t_n1_5_is_the_released_config_and_matches_the_reference_tensors():
  config = action_head.config_from_variant("gr00t_n1_5")
  assert action_head.ActionHeadConfig.from_gr00t_dict(RELEASED_N1_5) == config
  ref = ref_lib.build_reference(RELEASED_N1_5, device="meta")  # shapes only, no memory
  want = {f"action_head.{k}": tuple(v.shape) for k, v in ref.state_dict().items()}
  got = {k: tuple(v) for k, v in _shapes(config).items()}
  assert got == want
  ours, theirs = action_head.num_params(config), sum(p.numel() for p in ref.parameters())
  print(f"gr00t_n1_5 parameters: ours {ours:,}, reference {theirs:,}")
  assert ours == theirs == 1_068_806_144


def test_gr00t_dict_round_trip_and_variants():
  for variant in action_head.VARIANTS:
    config = action_head.config_from_variant(variant)
    # Every field GR00T records survives; the initialisation scale is not recorded (init only).
    loaded = action_head.ActionHeadConfig.from_gr00t_dict(config.to_gr00t_dict())
    assert loaded.embodiment_init_std == 0.02 and loaded.replace(embodiment_init_std=config.embodiment_init_std) == config
  tiny = action_head.config_from_variant("tiny", num_inference_timesteps=7)
  assert tiny.num_inference_timesteps == 7 and tiny.dit_num_layers == 4
  with pytest.raises(ValueError, match=r"unknown action head variant 'huge'; expected one of \['gr00t_n1_5', 'tiny', 'small'\]"):
    action_head.config_from_variant("huge")
  with pytest.raises(ValueError, match=r"unknown action head config fields \['hiden_size'\]"):
    action_head.config_from_variant("tiny", hiden_size=3)
  with pytest.raises(ValueError, match=r"dit_num_heads x dit_head_dim = 4 x 12 = 48 must equal input_embedding_dim 50"):
    action_head.config_from_variant("tiny", input_embedding_dim=50)
  with pytest.raises(ValueError, match=r"cross_attention_dim 1536 != backbone_embedding_dim 2048"):
    action_head.ActionHeadConfig.from_gr00t_dict(
        {**RELEASED_N1_5, "diffusion_model_cfg": {**RELEASED_N1_5["diffusion_model_cfg"], "cross_attention_dim": 1536}})
  with pytest.raises(ValueError, match=r"missing \['max_state_dim'\]"):
    action_head.ActionHeadConfig.from_gr00t_dict({k: v for k, v in RELEASED_N1_5.items() if k != "max_state_dim"})


def test_qwen_width_projection_adds_only_the_projection():
  base = action_head.config_from_variant("gr00t_n1_5")
  qwen = action_head.config_from_variant("gr00t_n1_5", backbone_feature_dim=3584)
  assert qwen.feature_dim == 3584
  assert action_head.num_params(qwen) - action_head.num_params(base) == 3584 * 2048 + 2048


def test_init_follows_gr00t_distributions():
  config = action_head.config_from_variant("tiny", dit_num_layers=1, vl_num_layers=1, max_num_embodiments=32)
  flat = traverse_util.flatten_dict(action_head.init_params(config, jax.random.key(0)))
  w2 = np.asarray(flat[("action_encoder", "W2", "W")])        # per-embodiment: 0.02 N(0, 1), bias 0
  assert abs(w2.std() - 0.02) < 0.002 and abs(w2.mean()) < 0.002
  assert not np.asarray(flat[("action_encoder", "W2", "b")]).any()
  k = np.asarray(flat[("model", "transformer_blocks_0", "ff_in", "kernel")])  # torch Linear: U(+-1/sqrt(in))
  bound = 1 / np.sqrt(k.shape[0])
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound
  np.testing.assert_array_equal(np.asarray(flat[("vlln", "scale")]), 1.0)
  assert abs(np.asarray(flat[("future_tokens",)]).std() - 0.02) < 0.006
  assert all(v.dtype == np.float32 for v in flat.values())


def test_embodiment_init_scale():
  """GR00T's 0.02 by default; 0 = 1/sqrt(fan in) (the CPU-sized `small` head)."""
  import jax
  import numpy as np
  for std, variant in ((0.02, "tiny"), (0.0, "small")):
    config = action_head.config_from_variant(variant)
    assert config.embodiment_init_std == std
    w = np.asarray(action_head.init_params(config, jax.random.PRNGKey(0))["action_decoder"]["layer1"]["W"])
    want = std or w.shape[1] ** -0.5
    assert abs(w.std() / want - 1) < 0.05, (variant, w.std(), want)
  with pytest.raises(ValueError, match="embodiment_init_std=-1.0 must be >= 0"):
    action_head.config_from_variant("tiny", embodiment_init_std=-1.0)
