"""Init from an HF checkpoint directory (vocabulary extended), train 2 steps, export, reload with
transformers: its logits equal the trained Flax model's, and the export reloads unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from roboalign_jax.fast.vocab import ActionVocab
from roboalign_jax.parallel import mesh as mesh_lib
from roboalign_jax.parallel import sharding as sharding_lib
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.train import sft

import sft_helpers
from qwen2_5_vl_reference import hf_forward, max_rel_err
import tiny_qwen


def test_init_train_export_reload_in_transformers(tmp_path):
  init_dir = tiny_qwen.checkpoint_dir(112 * 112)
  config = sft_helpers.config(2, mixture="action_only", eval_data=False, batch=4)
  config.model.init_dir = config.data.processor_dir = init_dir
  config.export.hf_dir = str(tmp_path / "hf")
  mesh = mesh_lib.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  setup = sft.build(config, mesh, num_steps=2)
  vocab = setup.backbone.model.config.text.vocab_size
  assert vocab > 1024 and vocab % 128 == 0  # grown to hold the 2050 action tokens
  initial = jax.device_get(setup.state.params)
  data, handles, _ = sft.resolve_data(config)
  batches = iter(sft.make_train_data(config, data, handles, patch_dim=1176))
  state = setup.state
  for _ in range(2):
    batch = next(batches)
    state, metrics = setup.step(state, sharding_lib.global_batch(batch, mesh))
  params = jax.device_get(state.params)
  assert np.any(params["lm_head"]["kernel"] != initial["lm_head"]["kernel"])
  out_dir = sft.export(config, str(tmp_path), state.params, setup.backbone)

  inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
  inputs["pixel_values"] = inputs["pixel_values"][:int(np.prod(inputs["image_grid_thw"][:4], axis=1).sum())]
  inputs["image_grid_thw"] = inputs["image_grid_thw"][:4]  # the blank padding images are ours only
  ours = np.asarray(setup.backbone.model.apply({"params": params}, **{k: jnp.asarray(v) for k, v in inputs.items()})
                    .logits)
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(out_dir, dtype=torch.float32,
                                                          attn_implementation="eager").eval()
  theirs, _ = hf_forward(hf, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                         inputs["image_grid_thw"])
  real = inputs["attention_mask"].astype(bool)
  # The backbone's own parity bound (tests/test_qwen2_5_vl_checkpoint.py).
  assert max_rel_err(ours[real], theirs[real]) <= 1e-4

  # The exported tokenizer keeps the action tokens at the ids the model was trained with, and
  # loading the export back changes nothing (no second vocabulary extension).
  assert ActionVocab.from_tokenizer(AutoTokenizer.from_pretrained(out_dir)) == setup.backbone.action_vocab
  reloaded = backbone_lib.load_dir(out_dir)
  assert reloaded.model.config.text.vocab_size == vocab
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), reloaded.params, params)
