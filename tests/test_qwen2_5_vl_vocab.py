"""Vocabulary extension: action tokens added to the tokenizer, embedding / lm_head resized with
mean-initialised rows, old behaviour unchanged, and the result round-trips through HF I/O."""


import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoTokenizer

from qwen2_5_vl_reference import hf_tiny, random_text
from roboalign_jax.fast.vocab import ACTION_END, ACTION_START, NUM_ACTION_TOKENS, action_token
from roboalign_jax.models import qwen2_5_vl
from roboalign_jax.models.qwen2_5_vl.vocab_extension import extend_vocabulary


@pytest.fixture(scope="module")
def extended():
  hf_dir, _ = hf_tiny()
  model, params = qwen2_5_vl.load_pretrained(hf_dir)
  tok = AutoTokenizer.from_pretrained(hf_dir)
  before = len(tok)
  tok, new_params, new_config, vocab = extend_vocabulary(tok, params, model.config)
  return hf_dir, model, params, before, tok, new_params, new_config, vocab


def test_tokens_and_mapping(extended):
  _, _, _, before, tok, _, config, vocab = extended
  assert len(tok) == before + NUM_ACTION_TOKENS + 2
  assert vocab.action_start_id == before and vocab.action_end_id == before + 1
  assert vocab.first_action_token_id == before + 2
  ids = tok(f"{ACTION_START}{action_token(5)}{action_token(2047)}{ACTION_END}", add_special_tokens=False)["input_ids"]
  assert ids == vocab.wrap([5, 2047])
  assert tok.decode(ids, skip_special_tokens=True) == "<action_start><action_5><action_2047><action_end>"
  assert config.text.vocab_size >= len(tok) and config.text.vocab_size % 128 == 0


def test_rows_are_mean_and_old_rows_unchanged(extended):
  _, model, params, before, tok, new_params, config, _ = extended
  for old, new in ((params["language_model"]["embed_tokens"]["embedding"],
                    new_params["language_model"]["embed_tokens"]["embedding"]),
                   (params["lm_head"]["kernel"].T, new_params["lm_head"]["kernel"].T)):
    assert new.shape == (config.text.vocab_size, old.shape[1])
    np.testing.assert_array_equal(new[:before], old[:before])
    mean = np.asarray(old[:before]).mean(0)
    np.testing.assert_allclose(new[before:len(tok)], np.broadcast_to(mean, (len(tok) - before, old.shape[1])),
                               rtol=1e-6, atol=1e-7)


def test_old_logits_unchanged_and_hf_round_trip(extended, tmp_path):
  _, model, params, before, tok, new_params, config, vocab = extended
  ids = jnp.asarray([random_text(np.random.default_rng(0), 12) + vocab.wrap([3, 9])])
  new_model = qwen2_5_vl.Qwen2_5_VL(config)
  old_ids = ids[:, :12]
  a = model.apply({"params": params}, old_ids).logits
  b = new_model.apply({"params": new_params}, old_ids).logits
  # Rows of the tokenizer's old tokens are untouched (unused padding rows were re-initialised).
  np.testing.assert_allclose(b[..., :before], a[..., :before], rtol=1e-6, atol=1e-6)
  out = new_model.apply({"params": new_params}, ids)
  assert out.logits.shape == (1, ids.shape[1], config.text.vocab_size)
  qwen2_5_vl.save_pretrained(new_params, config, str(tmp_path))
  tok.save_pretrained(str(tmp_path))
  model2, params2 = qwen2_5_vl.load_pretrained(str(tmp_path))
  assert model2.config.text.vocab_size == config.text.vocab_size
  tok2 = AutoTokenizer.from_pretrained(str(tmp_path))
  _, _, _, vocab2 = extend_vocabulary(tok2, params2, model2.config)  # already extended: no change
  assert vocab2 == vocab and len(tok2) == len(tok)
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
  with torch.no_grad():
    ref = hf(input_ids=torch.as_tensor(np.array(ids), dtype=torch.long)).logits.numpy()
  assert np.abs(ref - np.asarray(out.logits)).max() <= 1e-4 * np.abs(ref).max()
