"""Qwen3-VL (vision tower + text decoder with DeepStack + LM head) as one Flax Linen module, with the
same calls as `models/qwen2_5_vl/model.py`'s `Qwen2_5_VL`.

Full forward (training, scoring, features)::

    out = model.apply({"params": params}, input_ids, attention_mask=None, pixel_values=None,
                      image_grid_thw=None, output_hidden_states=False, num_layers=None,
                      frame_patches=None)
    out.logits         # f32 [B, T, vocab] (None when num_layers stops early)
    out.hidden_states  # tuple of [B, T, D]: 0 = embeddings, k = after layer k, last = final norm
    out.rope_deltas    # int32 [B]

Hidden state k (1 <= k < L) is decoder layer k's output *before* the DeepStack feature that is
added after it, as HF records it (see `text.py`). `num_layers=k` runs only the first k decoder
layers and returns k + 1 hidden states. `pixel_values` are [N_patches, 1536] (C*T*P*P with patch
16) in the processor's order; `frame_patches=h*w` promises that every image has that many patches
(per-image vision attention, same numbers).

KV-cache decoding (the rollout sampler), as for Qwen2.5-VL::

    logits, cache = model.apply({"params": params}, input_ids, attention_mask, pixel_values,
                                image_grid_thw, max_length=S, method=model.prefill)
    logits, cache = model.apply({"params": params}, tokens, cache, method=model.decode_step)

Prompts must be LEFT-padded; the cache is `qwen2_5_vl.KVCache` (the layout is the same: per layer
[B, S, kv_heads, head_dim] with rotary applied). DeepStack only touches image tokens, which are
all in the prompt, so decoding steps are plain decoder steps.

Positions are always computed from `attention_mask` (real tokens only), as HF does when it has
the image grids (and in `generate`), so left padding gives the same result as no padding.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from roboalign_jax.models.qwen2_5_vl.kv_cache import KVCache
from roboalign_jax.models.qwen2_5_vl.layers import Linear
from roboalign_jax.models.qwen2_5_vl.model import Output, _concrete, check_inputs
from roboalign_jax.models.qwen3_vl import rope
from roboalign_jax.models.qwen3_vl.config import Qwen3VLConfig
from roboalign_jax.models.qwen3_vl.text import TextDecoder
from roboalign_jax.models.qwen3_vl.vision import VisionTower

__all__ = ["Qwen3VL", "Output", "KVCache"]


class Qwen3VL(nn.Module):
  """Qwen3VLForConditionalGeneration. `config.dtype` is the compute dtype."""
  config: Qwen3VLConfig
  param_dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    self.visual = VisionTower(c.vision, c.dtype, self.param_dtype, remat=c.remat)
    self.language_model = TextDecoder(c.text, c.dtype, self.param_dtype, remat=c.remat)
    if not c.text.tie_word_embeddings:
      self.lm_head = Linear(c.text.vocab_size, ("embed", "vocab"), use_bias=False, dtype=c.dtype,
                            param_dtype=self.param_dtype)

  # ---- pieces ---------------------------------------------------------------------------------
  def logits(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> f32 [B, T, vocab]."""
    if self.config.text.tie_word_embeddings:
      y = self.language_model.attend(x)
    else:
      y = self.lm_head(x)
    return nn.with_logical_constraint(y.astype(jnp.float32), ("batch", "length", "vocab"))

  def image_features(self, pixel_values: jax.Array, image_grid_thw: jax.Array,
                     frame_patches: int | None = None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """[N_patches, 1536], int [n_images, 3] -> (merged [N_patches / 4, D], DeepStack features: one
    [N_patches / 4, D] per level), all images in order. (Qwen2.5-VL returns only the first.)"""
    return self.visual(pixel_values, image_grid_thw, frame_patches)

  def input_embeddings(self, input_ids, pixel_values=None, image_grid_thw=None, frame_patches=None):
    """Token embeddings with each image pad token replaced by its image feature. [B, T, D]"""
    return self._embed(input_ids, pixel_values, image_grid_thw, frame_patches)[0]

  def _embed(self, input_ids, pixel_values, image_grid_thw, frame_patches):
    """(embeddings [B, T, D], DeepStack additions: per level [B, T, D], zero off image tokens)."""
    x = self.language_model.embed(input_ids)
    if pixel_values is None:
      return x, ()
    merged, deepstack = self.image_features(pixel_values, image_grid_thw, frame_patches)
    is_img = (input_ids == self.config.image_token_id)[..., None]
    # The k-th image token of the row-major flattened batch takes the k-th image feature.
    ordinal = jnp.cumsum(is_img.reshape(-1)) - 1
    pick = jnp.clip(ordinal, 0, merged.shape[0] - 1)

    def scatter(feats, other):
      return jnp.where(is_img, feats.astype(x.dtype)[pick].reshape(x.shape), other)

    return scatter(merged, x), tuple(scatter(f, jnp.zeros((), x.dtype)) for f in deepstack)

  # ---- full forward ---------------------------------------------------------------------------
  def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
               output_hidden_states=False, num_layers=None, frame_patches=None):
    input_ids, attention_mask = self._check_inputs(input_ids, attention_mask, pixel_values, image_grid_thw,
                                                   num_layers, frame_patches)
    x, deepstack = self._embed(input_ids, pixel_values, image_grid_thw, frame_patches)
    pos, deltas = self._positions(input_ids, attention_mask, image_grid_thw)
    t = input_ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    mask = causal[None, None] & (attention_mask[:, None, None, :] > 0)
    states, _ = self.language_model(x, pos, mask, num_layers=num_layers, deepstack=deepstack)
    ran_all = num_layers is None or num_layers == self.config.text.num_hidden_layers
    logits = self.logits(states[-1]) if ran_all else None
    return Output(logits=logits, hidden_states=tuple(states) if (output_hidden_states or not ran_all) else None,
                  rope_deltas=deltas)

  # ---- KV-cache decoding ----------------------------------------------------------------------
  def prefill(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
              max_length: int, frame_patches: int | None = None):
    """Runs the (left-padded) prompt and returns (last-position logits f32 [B, vocab], KVCache)."""
    input_ids, attention_mask = self._check_inputs(input_ids, attention_mask, pixel_values, image_grid_thw,
                                                   None, frame_patches)
    b, t = input_ids.shape
    if max_length < t:
      raise ValueError(f"max_length {max_length} is shorter than the prompt ({t} tokens)")
    if _concrete(attention_mask) and not np.all(np.asarray(attention_mask)[:, -1]):
      raise ValueError("prefill: attention_mask must be left-padded (last position real in every row)")
    c = self.config.text
    x, deepstack = self._embed(input_ids, pixel_values, image_grid_thw, frame_patches)
    pos, deltas = self._positions(input_ids, attention_mask, image_grid_thw)
    cache = KVCache.init(b, max_length, c.num_hidden_layers, c.num_key_value_heads, c.head_dim,
                         self.config.dtype)
    key_mask = cache.mask.at[:, :t].set(attention_mask)
    slots = jnp.arange(max_length)
    mask = (slots[None, :] <= jnp.arange(t)[:, None])[None, None] & (key_mask[:, None, None, :] > 0)
    states, kv = self.language_model(x, pos, mask, kv=tuple(zip(cache.keys, cache.values)), index=0,
                                     deepstack=deepstack)
    logits = self.logits(states[-1][:, -1:])[:, 0]
    n_real = attention_mask.sum(-1).astype(jnp.int32)
    cache = KVCache(keys=tuple(k for k, _ in kv), values=tuple(v for _, v in kv), mask=key_mask,
                    length=jnp.asarray(t, jnp.int32), next_position=n_real + deltas, rope_deltas=deltas)
    return logits, cache

  def decode_step(self, tokens, cache: KVCache):
    """tokens: int [B] -> (logits f32 [B, vocab] for the following token, updated cache)."""
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 1 or tokens.shape[0] != cache.mask.shape[0]:
      raise ValueError(f"decode_step: tokens must be int [B={cache.mask.shape[0]}], got shape {tokens.shape}")
    x = self.language_model.embed(tokens[:, None])
    pos = jnp.broadcast_to(cache.next_position[None, :, None], (3, tokens.shape[0], 1))
    index = cache.length
    key_mask = jax.lax.dynamic_update_slice(cache.mask, jnp.ones((tokens.shape[0], 1), jnp.int32), (0, index))
    slots = jnp.arange(cache.max_length)
    mask = ((slots <= index)[None, :] & (key_mask > 0))[:, None, None, :]
    states, kv = self.language_model(x, pos, mask, kv=tuple(zip(cache.keys, cache.values)), index=index)
    logits = self.logits(states[-1])[:, 0]
    cache = cache.replace(keys=tuple(k for k, _ in kv), values=tuple(v for _, v in kv), mask=key_mask,
                          length=index + 1, next_position=cache.next_position + 1)
    return logits, cache

  # ---- helpers --------------------------------------------------------------------------------
  def _positions(self, input_ids, attention_mask, image_grid_thw):
    return rope.mrope_position_ids(input_ids, attention_mask, image_grid_thw, self.config.image_token_id,
                                   self.config.vision.spatial_merge_size)

  def _check_inputs(self, input_ids, attention_mask, pixel_values, image_grid_thw, num_layers,
                    frame_patches=None):
    """Shape checks always; value checks (token counts vs grids) when inputs are concrete."""
    return check_inputs(self.config, input_ids, attention_mask, pixel_values, image_grid_thw, num_layers,
                        frame_patches)
