"""GR00T checkpoint round trips and refusals: `export_gr00t` writes what GR00T's head loads with
`load_state_dict(strict=True)` and then samples identically; `load_gr00t` reads the export back
bit for bit; broken checkpoints fail with errors that name the input and the expectation."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from safetensors.torch import load_file as load_torch

import gr00t_reference as ref_lib
from roboalign_jax.models import action_head

CONFIG = dict(action_horizon=5, action_dim=7, max_state_dim=9, num_inference_timesteps=3, max_num_embodiments=4)


@pytest.fixture(scope="module")
def source():
  """A reference-perturbed checkpoint loaded into ours, then perturbed again on our side, so the
  exported tensors differ from anything GR00T wrote."""
  config = action_head.config_from_variant("tiny", **CONFIG)
  cfg = config.to_gr00t_dict()
  ckpt = ref_lib.write_checkpoint(ref_lib.tmp_dir("gr00t_src_"), ref_lib.random_reference(cfg, seed=2), cfg)
  head, params = action_head.load_gr00t(ckpt)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x + 0.05 * rng.normal(size=x.shape).astype(np.float32), params)
  return head, params, ckpt


def _reference_from_export(out_dir):
  with open(os.path.join(out_dir, "config.json")) as f:
    cfg = json.load(f)["action_head_cfg"]
  head = ref_lib.build_reference(cfg)
  tensors = {}
  for name in sorted(os.listdir(out_dir)):
    if name.endswith(".safetensors"):
      tensors.update(load_torch(os.path.join(out_dir, name)))
  head.load_state_dict({k[len("action_head."):]: v for k, v in tensors.items() if k.startswith("action_head.")},
                       strict=True)
  return head.eval(), tensors


@pytest.mark.parametrize("max_shard_bytes", [None, 20_000], ids=["single", "sharded"])
def test_export_loads_strictly_in_reference_and_back(source, tmp_path, max_shard_bytes):
  head, params, _ = source
  kw = {} if max_shard_bytes is None else dict(max_shard_bytes=max_shard_bytes)
  action_head.export_gr00t(params, head.config, str(tmp_path), **kw)
  files = os.listdir(tmp_path)
  assert ("model.safetensors.index.json" in files) == (max_shard_bytes is not None)
  ref, _ = _reference_from_export(str(tmp_path))  # strict=True: no missing or unexpected names
  # The reloaded reference samples what we sample.
  rng = np.random.default_rng(3)
  c = head.config
  vl = rng.normal(size=(2, 5, c.feature_dim)).astype(np.float32)
  state = rng.normal(size=(2, 1, c.max_state_dim)).astype(np.float32)
  ids = np.array([3, 1])
  want = ref_lib.reference_get_action(ref, vl, state, ids, seed=4)
  noise = ref_lib.reference_noise(4, want.shape)
  got = np.asarray(action_head.sample(head, params, vl, state, ids, noise=noise))
  assert ref_lib.max_rel_err(got - noise, want - noise) < 1e-4
  # And our loader reads the export back exactly.
  head2, params2 = action_head.load_gr00t(str(tmp_path))
  assert head2.config == head.config
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_projection_exports_as_eagle_linear(source, tmp_path):
  head, params, _ = source
  config = head.config.replace(backbone_feature_dim=11)
  rng = np.random.default_rng(1)
  params = dict(params, eagle_linear=dict(kernel=rng.normal(size=(11, 32)).astype(np.float32),
                                          bias=rng.normal(size=(32,)).astype(np.float32)))
  action_head.export_gr00t(params, config, str(tmp_path))
  with open(tmp_path / "config.json") as f:
    full = json.load(f)
  assert full["backbone_cfg"]["project_to_dim"] == config.backbone_embedding_dim
  tensors = load_file(str(tmp_path / "model.safetensors"))
  assert tensors["backbone.eagle_linear.weight"].shape == (config.backbone_embedding_dim, 11)
  assert tensors["backbone.eagle_linear.bias"].shape == (config.backbone_embedding_dim,)
  np.testing.assert_array_equal(tensors["backbone.eagle_linear.weight"], np.asarray(params["eagle_linear"]["kernel"]).T)
  _reference_from_export(str(tmp_path))  # the head part alone still loads strictly
  head2, params2 = action_head.load_gr00t(str(tmp_path))
  assert head2.config.backbone_feature_dim == 11
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  # An exported head without projection writes project_to_dim null, as released N1.5 does.
  action_head.export_gr00t(source[1], head.config, str(tmp_path / "plain"))
  with open(tmp_path / "plain" / "config.json") as f:
    assert json.load(f)["backbone_cfg"]["project_to_dim"] is None


# ---- refusals ---------------------------------------------------------------------------------------
def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def _edit_tensors(ckpt, fn):
  path = os.path.join(ckpt, "model.safetensors")
  tensors = fn(load_file(path))
  os.remove(path)
  save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(source, tmp_path):
  ckpt = _copy(source[2], tmp_path / "c")
  name = "action_head.model.transformer_blocks.1.attn1.to_k.bias"
  _edit_tensors(ckpt, lambda t: {k: v for k, v in t.items() if k != name})
  with pytest.raises(ValueError, match=r"missing 1 .*to_k\.bias"):
    action_head.load_gr00t(ckpt)


def test_misshaped_tensor_is_named(source, tmp_path):
  ckpt = _copy(source[2], tmp_path / "c")
  name = "action_head.action_encoder.W2.W"
  _edit_tensors(ckpt, lambda t: {**t, name: t[name][:, :-1]})
  with pytest.raises(ValueError, match=r"action_encoder\.W2\.W.*shape \(4, 95, 48\).*expects \(4, 96, 48\)"):
    action_head.load_gr00t(ckpt)


def test_unexpected_head_tensor_is_named(source, tmp_path):
  ckpt = _copy(source[2], tmp_path / "c")
  _edit_tensors(ckpt, lambda t: {**t, "action_head.model.transformer_blocks.9.norm1.linear.weight": np.zeros((2, 2),
                                                                                                           np.float32)})
  with pytest.raises(ValueError, match=r"not in a head of this config.*transformer_blocks\.9"):
    action_head.load_gr00t(ckpt)


def test_config_without_action_head_cfg(source, tmp_path):
  ckpt = _copy(source[2], tmp_path / "c")
  with open(os.path.join(ckpt, "config.json"), "w") as f:
    json.dump({"model_type": "gr00t_n1_5", "backbone_cfg": {}}, f)
  with pytest.raises(ValueError,
                     match=r"config\.json: no 'action_head_cfg'.*keys found: \['backbone_cfg', 'model_type'\]"):
    action_head.load_gr00t(ckpt)


def test_unsupported_head_option_is_named(source, tmp_path):
  ckpt = _copy(source[2], tmp_path / "c")
  path = os.path.join(ckpt, "config.json")
  with open(path) as f:
    full = json.load(f)
  full["action_head_cfg"]["diffusion_model_cfg"].pop("positional_embeddings")  # GR00T's default: sinusoidal
  with open(path, "w") as f:
    json.dump(full, f)
  with pytest.raises(ValueError, match=r"diffusion_model_cfg\.positional_embeddings = 'sinusoidal' is not supported"):
    action_head.load_gr00t(ckpt)


def test_missing_files(source, tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint directory .* not found"):
    action_head.load_gr00t(str(tmp_path / "nowhere"))
  ckpt = _copy(source[2], tmp_path / "c")
  os.remove(os.path.join(ckpt, "config.json"))
  with pytest.raises(FileNotFoundError, match="config.json.* not found; expected a GR00T checkpoint"):
    action_head.load_gr00t(ckpt)
  ckpt = _copy(source[2], tmp_path / "d")
  os.rename(os.path.join(ckpt, "model.safetensors"), os.path.join(ckpt, "pytorch_model.bin"))
  with pytest.raises(FileNotFoundError, match=r"no weights .*pickle-based weights are never loaded"):
    action_head.load_gr00t(ckpt)
  ckpt = _copy(source[2], tmp_path / "e")
  with open(os.path.join(ckpt, "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": {"action_head.vlln.weight": "model-00001-of-00002.safetensors"}}, f)
  with pytest.raises(FileNotFoundError, match="lists shards that are missing"):
    action_head.load_gr00t(ckpt)


def test_checkpoint_without_head_tensors(source, tmp_path):
  ckpt = _copy(source[2], tmp_path / "c")
  _edit_tensors(ckpt, lambda t: {"backbone.x": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"no action_head\.\* tensors"):
    action_head.load_gr00t(ckpt)


def test_projection_declared_but_absent(source, tmp_path):
  ckpt = _copy(source[2], tmp_path / "c")
  path = os.path.join(ckpt, "config.json")
  with open(path) as f:
    full = json.load(f)
  full["backbone_cfg"]["project_to_dim"] = full["action_head_cfg"]["backbone_embedding_dim"]
  with open(path, "w") as f:
    json.dump(full, f)
  with pytest.raises(ValueError, match=r"project_to_dim is 32 but the checkpoint has no 2-D backbone\.eagle_linear"):
    action_head.load_gr00t(ckpt)


def test_export_refuses_params_of_another_config(source, tmp_path):
  head, params, _ = source
  other = head.config.replace(hidden_size=24)
  with pytest.raises(ValueError, match="export_gr00t: .*shape"):
    action_head.export_gr00t(params, other, str(tmp_path))
