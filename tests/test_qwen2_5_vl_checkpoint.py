"""HF checkpoint I/O: our save_pretrained loads in transformers with the same logits; load ->
save -> load is bit-identical; sharded / Hub-layout / flat-config checkpoints load; the
convert CLI round-trips both ways."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.numpy import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration

from qwen2_5_vl_reference import TINY, hf_forward, hf_tiny, image_block, max_rel_err, random_pixels, random_text
from roboalign_jax.models import qwen2_5_vl
from roboalign_jax.models.qwen2_5_vl import checkpoint_io

import launch_helpers

convert_checkpoint = launch_helpers.import_launcher("convert_checkpoint")


def _flat(params):
  return traverse_util.flatten_dict(params)


def _assert_same_params(a, b):
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg="/".join(k))


def _inputs():
  rng = np.random.default_rng(7)
  grid = np.array([[1, 10, 12]], np.int32)
  ids = np.array([random_text(rng, 4) + image_block(grid[0]) + random_text(rng, 5)], np.int32)
  return ids, random_pixels(rng, grid), grid


@pytest.fixture(scope="module")
def loaded():
  hf_dir, hf_model = hf_tiny()
  model, params = qwen2_5_vl.load_pretrained(hf_dir)
  return hf_dir, hf_model, model, params


def test_saved_checkpoint_loads_in_transformers_with_same_logits(loaded, tmp_path):
  _, hf_model, model, params = loaded
  qwen2_5_vl.save_pretrained(params, model.config, str(tmp_path))
  reloaded, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
      str(tmp_path), attn_implementation="eager", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
  ids, pixels, grid = _inputs()
  ref, _ = hf_forward(hf_model, ids, None, pixels, grid)
  got, _ = hf_forward(reloaded.eval(), ids, None, pixels, grid)
  ours = model.apply({"params": params}, jnp.asarray(ids), None, jnp.asarray(pixels), jnp.asarray(grid)).logits
  assert max_rel_err(got, ref) < 1e-6
  assert max_rel_err(ours, got) <= 1e-4


def test_load_save_load_is_identical(loaded, tmp_path):
  _, _, model, params = loaded
  qwen2_5_vl.save_pretrained(params, model.config, str(tmp_path))
  model2, params2 = qwen2_5_vl.load_pretrained(str(tmp_path))
  assert model2.config == model.config
  _assert_same_params(params, params2)


def test_sharded_checkpoint_with_index(loaded, tmp_path):
  _, _, model, params = loaded
  qwen2_5_vl.save_pretrained(params, model.config, str(tmp_path), max_shard_bytes=2 ** 20)
  index = json.load(open(tmp_path / "model.safetensors.index.json"))
  assert len(set(index["weight_map"].values())) > 1
  _, params2 = qwen2_5_vl.load_pretrained(str(tmp_path))
  _assert_same_params(params, params2)


def test_transformers_layout_and_flat_config_with_rope_scaling(loaded, tmp_path):
  """Newer names (model.language_model.*, model.visual.*) + a flat Hub-style config.json."""
  hf_dir, _, _, params = loaded
  hub = checkpoint_io.read_hf_tensors(hf_dir)  # transformers 5.23 writes the Hub layout
  assert any(k.startswith("visual.") for k in hub)
  tensors = {("model." + k) if k.startswith("visual.") else k.replace("model.", "model.language_model.", 1): v
             for k, v in hub.items()}
  cfg = json.load(open(os.path.join(hf_dir, "config.json")))
  flat = {k: v for k, v in cfg.items() if k != "text_config"}
  text = dict(cfg["text_config"])
  rope = text.pop("rope_parameters")
  flat.update({k: v for k, v in text.items() if k != "model_type"})
  flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
  flat["rope_theta"] = rope["rope_theta"]
  json.dump(flat, open(tmp_path / "config.json", "w"))
  save_file(tensors, str(tmp_path / "model.safetensors"))
  model2, params2 = qwen2_5_vl.load_pretrained(str(tmp_path))
  assert model2.config.text == TINY.text
  _assert_same_params(params, params2)


def test_bf16_load(loaded, tmp_path):
  _, _, model, params = loaded
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  qwen2_5_vl.save_pretrained(bf16, model.config, str(tmp_path))
  assert json.load(open(tmp_path / "config.json"))["torch_dtype"] == "bfloat16"
  model2, params2 = qwen2_5_vl.load_pretrained(str(tmp_path), dtype=jnp.bfloat16)
  _assert_same_params(bf16, params2)
  ids, pixels, grid = _inputs()
  out = model2.apply({"params": params2}, jnp.asarray(ids), None, jnp.asarray(pixels), jnp.asarray(grid))
  assert out.logits.dtype == jnp.float32 and np.isfinite(np.asarray(out.logits)).all()


def test_convert_cli_round_trip(loaded, tmp_path):
  hf_dir, _, _, params = loaded
  ours, back = str(tmp_path / "jax"), str(tmp_path / "hf")
  convert_checkpoint.convert(hf_dir, None, ours, to_hf=False)
  assert os.path.isfile(os.path.join(ours, "params.safetensors"))
  assert os.path.isfile(os.path.join(ours, "tokenizer.json"))
  _, flax_params = checkpoint_io.load_flax(ours)
  _assert_same_params(params, flax_params)
  convert_checkpoint.convert(None, ours, back, to_hf=True)
  _, params_back = qwen2_5_vl.load_pretrained(back)
  _assert_same_params(params, params_back)
  # Tensor by tensor equal to what transformers wrote.
  orig = load_file(os.path.join(hf_dir, "model.safetensors"))
  new = load_file(os.path.join(back, "model.safetensors"))
  assert orig.keys() == new.keys()
  for name, value in new.items():
    np.testing.assert_array_equal(value, orig[name], err_msg=name)


def test_tiny_checkpoint_writer(tmp_path):
  """The package's torch-free tiny checkpoint (for demos) loads here and in transformers, and
  its processor output runs through the model."""
  from PIL import Image
  from roboalign_jax.models.qwen2_5_vl import tiny
  d = tiny.write_checkpoint(str(tmp_path / "tiny"))
  model, params = qwen2_5_vl.load_pretrained(d)
  assert model.config.text.vocab_size == 1024 and model.config.image_token_id == 12
  proc = qwen2_5_vl.Processor.from_pretrained(d)
  img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 320, 3), dtype=np.uint8))
  batch = proc.apply_chat_template([[{"role": "user", "content": [
      {"type": "image", "image": img}, {"type": "text", "text": "pick up the red block"}]}]])
  assert int(np.prod(batch["image_grid_thw"], 1).sum()) // 4 <= 64  # max_pixels of the tiny processor
  out = model.apply({"params": params}, **{k: jnp.asarray(v) for k, v in batch.items()})
  assert out.logits.shape == (1, batch["input_ids"].shape[1], 1024)
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(d).eval()
  ids = torch.as_tensor(batch["input_ids"].astype(np.int64))
  with torch.no_grad():
    ref = hf(input_ids=ids, pixel_values=torch.as_tensor(batch["pixel_values"]),
             image_grid_thw=torch.as_tensor(batch["image_grid_thw"].astype(np.int64)),
             mm_token_type_ids=(ids == 12).int()).logits.numpy()
  assert max_rel_err(out.logits, ref) <= 1e-4
