"""Bad inputs raise clear errors naming the input; parameter counts of the released configs;
the model path never imports torch."""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from qwen2_5_vl_reference import hf_tiny, image_block, random_pixels, random_text
from roboalign_jax.models import qwen2_5_vl


@pytest.fixture(scope="module")
def hf_dir():
  return hf_tiny()[0]


@pytest.fixture(scope="module")
def loaded(hf_dir):
  return qwen2_5_vl.load_pretrained(hf_dir)


def _copy(hf_dir, tmp_path):
  out = tmp_path / "ckpt"
  shutil.copytree(hf_dir, out)
  return out


@pytest.mark.parametrize("variant,expected", [("3b", 3_754_622_976), ("7b", 8_292_166_656)])
def test_parameter_counts(variant, expected):
  model = qwen2_5_vl.Qwen2_5_VL(qwen2_5_vl.Qwen2_5_VLConfig.from_variant(variant))
  shapes = nn.unbox(qwen2_5_vl.abstract_params(model))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == expected


def test_missing_weights_file(hf_dir, tmp_path):
  out = _copy(hf_dir, tmp_path)
  os.remove(out / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="no weights in .*expected model.safetensors"):
    qwen2_5_vl.load_pretrained(str(out))
  (out / "pytorch_model.bin").write_bytes(b"not loaded")
  with pytest.raises(FileNotFoundError, match="pickle-based weights are never loaded"):
    qwen2_5_vl.load_pretrained(str(out))
  with pytest.raises(FileNotFoundError, match="checkpoint directory .* not found"):
    qwen2_5_vl.load_pretrained(str(tmp_path / "nope"))


def test_missing_config(hf_dir, tmp_path):
  out = _copy(hf_dir, tmp_path)
  os.remove(out / "config.json")
  with pytest.raises(FileNotFoundError, match="config.json"):
    qwen2_5_vl.load_pretrained(str(out))


def test_config_of_another_architecture(hf_dir, tmp_path):
  out = _copy(hf_dir, tmp_path)
  json.dump({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64},
            open(out / "config.json", "w"))
  with pytest.raises(ValueError, match=r"expected a Qwen2.5-VL config .*got model_type='qwen2'"):
    qwen2_5_vl.load_pretrained(str(out))


def test_shape_mismatch_and_missing_tensor(hf_dir, tmp_path):
  out = _copy(hf_dir, tmp_path)
  tensors = load_file(str(out / "model.safetensors"))
  name = "model.layers.1.mlp.up_proj.weight"
  good = tensors[name]
  tensors[name] = np.zeros((good.shape[0] + 1, good.shape[1]), good.dtype)
  save_file(tensors, str(out / "model.safetensors"))
  with pytest.raises(ValueError, match=r"tensor 'model.layers.1.mlp.up_proj.weight' has shape .* config expects"):
    qwen2_5_vl.load_pretrained(str(out))
  del tensors[name]
  save_file(tensors, str(out / "model.safetensors"))
  with pytest.raises(ValueError, match=r"missing 1 tensors, e.g. \['model.layers.1.mlp.up_proj.weight'\]"):
    qwen2_5_vl.load_pretrained(str(out))
  tensors[name] = good
  tensors["model.layers.9.mlp.up_proj.weight"] = good
  save_file(tensors, str(out / "model.safetensors"))
  with pytest.raises(ValueError, match="not in a Qwen2.5-VL model of this config"):
    qwen2_5_vl.load_pretrained(str(out))


def test_bad_forward_inputs(loaded):
  model, params = loaded
  apply = lambda *a, **k: model.apply({"params": params}, *a, **k)
  rng = np.random.default_rng(0)
  grid = np.array([[1, 8, 8]], np.int32)
  ids = np.array([random_text(rng, 3) + image_block(grid[0]) + random_text(rng, 2)], np.int32)
  pixels = random_pixels(rng, grid)
  # image-token count != what the grid needs
  with pytest.raises(ValueError, match=r"input_ids hold 16 image tokens .* needs 32"):
    apply(jnp.asarray(ids), None, jnp.asarray(np.concatenate([pixels, pixels])), jnp.asarray([[1, 8, 16]]))
  with pytest.raises(ValueError, match="pixel_values has 64 patches but image_grid_thw"):
    apply(jnp.asarray(ids), None, jnp.asarray(pixels), jnp.asarray([[1, 8, 10]]))
  with pytest.raises(ValueError, match=r"pixel_values: expected float \[num_patches, 1176\]"):
    apply(jnp.asarray(ids), None, jnp.asarray(pixels[:, :100]), jnp.asarray(grid))
  with pytest.raises(ValueError, match="image tokens .* but no pixel_values"):
    apply(jnp.asarray(ids))
  with pytest.raises(ValueError, match="must be given together"):
    apply(jnp.asarray(ids), None, jnp.asarray(pixels))
  with pytest.raises(ValueError, match="attention_mask: expected shape"):
    apply(jnp.asarray(ids), jnp.ones((1, 3), jnp.int32), jnp.asarray(pixels), jnp.asarray(grid))
  with pytest.raises(ValueError, match=r"input_ids: expected int \[batch, length\]"):
    apply(jnp.asarray(ids[0]))
  with pytest.raises(ValueError, match="h, w multiples of 2"):
    apply(jnp.asarray(ids), None, jnp.asarray(pixels[:63]), jnp.asarray([[1, 7, 9]]))
  with pytest.raises(ValueError, match="num_layers: expected 0..4"):
    apply(jnp.asarray(ids), None, jnp.asarray(pixels), jnp.asarray(grid), num_layers=9)


def test_model_path_does_not_import_torch(hf_dir):
  code = (
      "import sys, jax.numpy as jnp\n"
      "from roboalign_jax.models import qwen2_5_vl\n"
      f"model, params = qwen2_5_vl.load_pretrained({hf_dir!r})\n"
      "model.apply({'params': params}, jnp.ones((1, 4), jnp.int32))\n"
      "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules), 'torch imported'\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
