"""Extends a Qwen2.5-VL tokenizer and model with the action tokens `<action_start>`,
`<action_end>`, `<action_0>` ... `<action_2047>` (strings and the FAST id <-> token id mapping
are owned by `roboalign_jax.fast.vocab`).

    tokenizer, params, config, action_vocab = extend_vocabulary(tokenizer, params, model.config)
    model = Qwen2_5_VL(config)   # the resized model

New embedding (and untied lm_head) rows are the mean of the rows of the tokens the tokenizer
had before, a neutral start that keeps the new tokens' initial logits ordinary.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from roboalign_jax.fast.vocab import ActionVocab, action_token_strings
from roboalign_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig


def add_action_tokens(tokenizer) -> ActionVocab:
  """Adds the action tokens to a HF tokenizer in place (no-op when already there)."""
  strings = action_token_strings()
  present = [s for s in strings if s in tokenizer.get_vocab()]
  if present and len(present) != len(strings):
    raise ValueError(f"tokenizer already has {len(present)} of the {len(strings)} action tokens "
                     f"(e.g. {present[:3]}); expected none or all")
  if not present:
    from transformers import AddedToken  # lazy: heavy, and imports torch when installed
    # Not "special": they stay visible when decoding with skip_special_tokens=True.
    tokenizer.add_tokens([AddedToken(s, special=False, normalized=False) for s in strings])
  return ActionVocab.from_tokenizer(tokenizer)


def resize_vocabulary(params: dict, config: Qwen2_5_VLConfig, new_vocab_size: int, init_ids: range,
                      mean_over: int) -> tuple[dict, Qwen2_5_VLConfig]:
  """Grows the embedding / lm_head to `new_vocab_size` rows; rows `init_ids` get the mean of rows
  [0, mean_over). Returns (params, config) with the new vocab_size."""
  old = config.text.vocab_size
  if new_vocab_size < old:
    raise ValueError(f"new_vocab_size {new_vocab_size} is smaller than the current {old}")
  if not 0 < mean_over <= old:
    raise ValueError(f"mean_over {mean_over} must be in [1, {old}]")

  def grow(matrix: jnp.ndarray, axis: int) -> jnp.ndarray:
    # matrix: [vocab, D] (embedding, axis 0) or [D, vocab] (lm_head kernel, axis 1)
    m = jnp.moveaxis(matrix, axis, 0)
    mean = m[:mean_over].astype(jnp.float32).mean(0).astype(m.dtype)
    m = jnp.concatenate([m, jnp.broadcast_to(mean, (new_vocab_size - old, m.shape[1]))], 0)
    m = m.at[jnp.asarray(list(init_ids))].set(mean)
    return jnp.moveaxis(m, 0, axis)

  lm = dict(params["language_model"])
  lm["embed_tokens"] = {"embedding": grow(lm["embed_tokens"]["embedding"], 0)}
  params = {**params, "language_model": lm}
  if "lm_head" in params:
    params["lm_head"] = {"kernel": grow(params["lm_head"]["kernel"], 1)}
  text = dataclasses.replace(config.text, vocab_size=new_vocab_size)
  return params, config.replace(text=text)


def padded_vocab_size(vocab_size: int, tokenizer_len: int, multiple: int = 128) -> int:
  """The vocabulary that holds both the model's rows and the tokenizer's ids: max(vocab_size,
  tokenizer_len) rounded up to `multiple` (keeps it divisible by tensor-parallel sizes)."""
  return -(-max(vocab_size, tokenizer_len) // multiple) * multiple


def extend_vocabulary(tokenizer, params: dict, config: Qwen2_5_VLConfig, pad_to_multiple_of: int = 128):
  """Adds the action tokens to `tokenizer` (in place) and resizes the model to hold them.

  The vocabulary becomes `padded_vocab_size(old vocab_size, len(tokenizer), pad_to_multiple_of)`. Returns (tokenizer, params, config, ActionVocab).
  """
  before = len(tokenizer)
  if before > config.text.vocab_size:
    raise ValueError(f"tokenizer has {before} tokens but the model's vocab_size is {config.text.vocab_size}")
  vocab = add_action_tokens(tokenizer)
  after = len(tokenizer)
  if after == before:
    return tokenizer, params, config, vocab  # already extended
  size = padded_vocab_size(config.text.vocab_size, after, pad_to_multiple_of)
  params, config = resize_vocabulary(params, config, size, range(before, after), mean_over=before)
  return tokenizer, params, config, vocab
