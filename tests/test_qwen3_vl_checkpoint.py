"""Qwen3-VL HF checkpoint I/O: a transformers checkpoint loads into ours with HF's logits, our
save_pretrained loads back into transformers (tied and untied heads) with the same logits and
tensor-for-tensor equal to what transformers wrote; sharded and bf16 saves round-trip; bad
checkpoints are refused by name; and the released 2B / 4B / 8B configs give HF's parameter count."""

import dataclasses
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from transformers import Qwen3VLConfig as HFConfig
from transformers import Qwen3VLForConditionalGeneration

import launch_helpers
from qwen3_vl_reference import (errors, hf_config, hf_forward, hf_tiny, image_block, loaded_tiny, random_pixels,
                                random_text)
from roboalign_jax.models import qwen3_vl
from roboalign_jax.models.qwen3_vl import Qwen3VLConfig, checkpoint_io


def _assert_same_params(a, b):
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg="/".join(k))


def _inputs():
  rng = np.random.default_rng(7)
  grid = np.array([[1, 8, 10]], np.int32)
  ids = np.array([random_text(rng, 4) + image_block(grid[0]) + random_text(rng, 5)], np.int32)
  return ids, random_pixels(rng, grid), grid


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_round_trip_through_transformers(tied, tmp_path):
  hf_dir, hf_model = hf_tiny(tied)
  model, params = qwen3_vl.load_pretrained(hf_dir)
  assert model.config.text.tie_word_embeddings == tied and ("lm_head" in params) == (not tied)
  ids, pixels, grid = _inputs()
  ref, _ = hf_forward(hf_model, ids, None, pixels, grid)
  ours = jax.jit(lambda p, ids, pix, grid: model.apply({"params": p}, ids, None, pix, grid).logits)(
      params, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(grid))
  err = errors(ours, ref)
  print(f"\n{'tied' if tied else 'untied'} logits vs HF: max abs {err[0]:.2e} rel {err[1]:.2e}")
  assert err[1] <= 1e-4

  qwen3_vl.save_pretrained(params, model.config, str(tmp_path))
  saved = checkpoint_io.read_hf_tensors(str(tmp_path))
  assert ("lm_head.weight" in saved) == (not tied)
  reloaded, info = Qwen3VLForConditionalGeneration.from_pretrained(
      str(tmp_path), attn_implementation="eager", output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  got, _ = hf_forward(reloaded.eval(), ids, None, pixels, grid)
  np.testing.assert_array_equal(got, ref)
  # Same names and values as the checkpoint transformers wrote.
  original = checkpoint_io.read_hf_tensors(hf_dir)
  assert saved.keys() == original.keys()
  assert all(k.startswith(("model.visual.", "model.language_model.", "lm_head.")) for k in saved)
  for name, value in saved.items():
    np.testing.assert_array_equal(value, original[name], err_msg=name)


def test_sharded_and_bf16_saves_load_back(tmp_path):
  model, params, _ = loaded_tiny()
  qwen3_vl.save_pretrained(params, model.config, str(tmp_path / "sharded"), max_shard_bytes=2 ** 20)
  index = json.load(open(tmp_path / "sharded" / "model.safetensors.index.json"))
  assert len(set(index["weight_map"].values())) > 1
  model2, params2 = qwen3_vl.load_pretrained(str(tmp_path / "sharded"))
  assert model2.config == model.config
  _assert_same_params(params, params2)

  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  qwen3_vl.save_pretrained(bf16, model.config, str(tmp_path / "bf16"))
  assert json.load(open(tmp_path / "bf16" / "config.json"))["torch_dtype"] == "bfloat16"
  assert checkpoint_io.stored_dtype(str(tmp_path / "bf16")) == jnp.bfloat16
  model3, params3 = qwen3_vl.load_pretrained(str(tmp_path / "bf16"), dtype=jnp.bfloat16, compute_dtype=jnp.float32)
  assert model3.config.dtype == jnp.float32
  _assert_same_params(bf16, params3)


def test_bad_checkpoints_are_refused():
  model, params, _ = loaded_tiny()
  tensors = checkpoint_io.hf_tensors_from_params(params, model.config)
  good = checkpoint_io.params_from_hf_tensors(tensors, model)
  _assert_same_params(params, good)
  name = "model.language_model.layers.1.self_attn.k_norm.weight"
  with pytest.raises(ValueError, match=r"missing 1 tensors, e.g. \['" + name.replace(".", r"\.")):
    checkpoint_io.params_from_hf_tensors({k: v for k, v in tensors.items() if k != name}, model)
  # Qwen2.5-VL's Hub names are not a Qwen3-VL layout.
  legacy = {k.replace("model.visual.", "visual."): v for k, v in tensors.items()}
  with pytest.raises(ValueError, match=r"missing 75 tensors.*; 75 tensors not in a Qwen3-VL model of this config, "
                     r"e.g. \['visual\.blocks"):
    checkpoint_io.params_from_hf_tensors(legacy, model)
  wrong = dict(tensors, **{name: np.zeros((5,), np.float32)})
  with pytest.raises(ValueError, match="k_norm.weight' has shape"):
    checkpoint_io.params_from_hf_tensors(wrong, model)
  with pytest.raises(FileNotFoundError, match="not found"):
    qwen3_vl.load_pretrained("/nonexistent/qwen3_vl")


@pytest.mark.parametrize("variant", ["2b", "4b", "8b"])
def test_parameter_count_equals_transformers(variant):
  """Our parameter tree for the released configs has HF's shapes' total (tied head counted once).
  Published totals: 2B 2,127,532,032; 4B 4,437,815,808; 8B 8,767,123,696."""
  config = Qwen3VLConfig.from_variant(variant)
  ours = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(qwen3_vl.abstract_params(config))))
  with torch.device("meta"):
    hf = Qwen3VLForConditionalGeneration(hf_config(config))
  assert (hf.lm_head.weight is hf.model.language_model.embed_tokens.weight) == config.text.tie_word_embeddings
  hf_count = sum(p.numel() for p in hf.parameters())  # shared (tied) parameters once
  print(f"\n{variant}: ours {ours:,} HF {hf_count:,}")
  assert ours == hf_count
  assert ours == {"2b": 2_127_532_032, "4b": 4_437_815_808, "8b": 8_767_123_696}[variant]


def test_convert_cli_round_trip(tmp_path):
  """launch/convert_checkpoint.py --family=qwen3_vl: HF -> ours -> HF gives the same tensors."""
  convert_checkpoint = launch_helpers.import_launcher("convert_checkpoint")
  hf_dir, _ = hf_tiny()
  ours, back = str(tmp_path / "jax"), str(tmp_path / "hf")
  convert_checkpoint.convert(hf_dir, None, ours, to_hf=False, family="qwen3_vl")
  model, params = checkpoint_io.load_flax(ours)
  assert isinstance(model, qwen3_vl.Qwen3VL)
  convert_checkpoint.convert(None, ours, back, to_hf=True, family="qwen3_vl")
  original, converted = checkpoint_io.read_hf_tensors(hf_dir), checkpoint_io.read_hf_tensors(back)
  assert original.keys() == converted.keys()
  for name, value in converted.items():
    np.testing.assert_array_equal(value, original[name], err_msg=name)


@pytest.mark.parametrize("variant", ["tiny", "2b", "4b", "8b"])
def test_config_round_trips_through_transformers(variant):
  """ours -> config.json -> transformers' Qwen3VLConfig -> its dict -> ours: nothing lost (a non-default
  vision rope theta included)."""
  config = Qwen3VLConfig.from_variant(variant)
  config = config.replace(vision=dataclasses.replace(config.vision, rope_theta=20000.0))
  assert Qwen3VLConfig.from_hf_dict(HFConfig(**config.to_hf_dict()).to_dict()) == config
