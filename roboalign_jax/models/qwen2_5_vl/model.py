"""Qwen2.5-VL (vision tower + text decoder + LM head) as one Flax Linen module.

Full forward (training, scoring, features)::

    out = model.apply({"params": params}, input_ids, attention_mask=None, pixel_values=None,
                      image_grid_thw=None, output_hidden_states=False, num_layers=None)
    out.logits         # f32 [B, T, vocab] (None when num_layers stops early)
    out.hidden_states  # tuple of [B, T, D]: 0 = embeddings, k = after layer k, last = final norm
    out.rope_deltas    # int32 [B]

`num_layers=k` runs only the first k decoder layers and returns k + 1 hidden states (the VLA
head reads layer 18 this way without paying for the rest of the model).

`frame_patches=h*w` (a static int; also accepted by `prefill`) promises that every image has the
same patch grid, as with fixed robot cameras: the vision tower then attends per image instead of
over one packed, masked sequence of the whole batch (linear instead of quadratic in the number
of images, same numbers). Checked against `image_grid_thw` when that is concrete.

KV-cache decoding (the rollout sampler)::

    logits, cache = model.apply({"params": params}, input_ids, attention_mask, pixel_values,
                                image_grid_thw, max_length=S, method=model.prefill)
    # logits: f32 [B, vocab] at the last prompt position; prompts must be LEFT-padded so that
    # position T-1 is real in every row. cache: KVCache with S >= T slots, T of them written.
    logits, cache = model.apply({"params": params}, tokens, cache, method=model.decode_step)
    # tokens: int [B] (the tokens just chosen) -> logits for the next ones; each call fills one
    # slot and advances `cache.next_position` (the prompt's M-RoPE position continued by the
    # rope delta: next = n_real + rope_delta, then +1 per step).

Both methods are pure functions of (params, inputs, cache) and jit with static `max_length`.
Positions are always computed from `attention_mask` (real tokens only), as HF does when it has
the image grids (and in `generate`), so left padding gives the same result as no padding.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from roboalign_jax.models.qwen2_5_vl import rope
from roboalign_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from roboalign_jax.models.qwen2_5_vl.kv_cache import KVCache
from roboalign_jax.models.qwen2_5_vl.layers import Linear
from roboalign_jax.models.qwen2_5_vl.text import TextDecoder
from roboalign_jax.models.qwen2_5_vl.vision import VisionTower


@flax.struct.dataclass
class Output:
  logits: jax.Array | None
  hidden_states: tuple[jax.Array, ...] | None = None
  rope_deltas: jax.Array | None = None


def _concrete(x) -> bool:
  return x is not None and not isinstance(x, jax.core.Tracer)


class Qwen2_5_VL(nn.Module):
  """Qwen2_5_VLForConditionalGeneration. `config.dtype` is the compute dtype.

  Qwen3-VL subclasses it (`qwen3_vl/model.py`): other tower classes and an `_embed` that also
  returns the decoder's DeepStack features.
  """
  config: Qwen2_5_VLConfig
  param_dtype: Any = jnp.float32
  # The family's towers: plain class attributes (not module fields), so a subclass swaps them.
  vision_tower_cls = VisionTower
  text_decoder_cls = TextDecoder

  def setup(self):
    c = self.config
    self.visual = self.vision_tower_cls(c.vision, c.dtype, self.param_dtype, remat=c.remat)
    self.language_model = self.text_decoder_cls(c.text, c.dtype, self.param_dtype, remat=c.remat)
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
                     frame_patches: int | None = None) -> jax.Array:
    """[N_patches, 1176], int [n_images, 3] -> [N_patches / 4, D] (all images, in order). Qwen3-VL:
    [N_patches, 1536] -> (that, its DeepStack features: one more such array per level)."""
    return self.visual(pixel_values, image_grid_thw, frame_patches)

  def input_embeddings(self, input_ids, pixel_values=None, image_grid_thw=None, frame_patches=None):
    """Token embeddings with each image pad token replaced by its image feature. [B, T, D]"""
    return self._embed(input_ids, pixel_values, image_grid_thw, frame_patches)[0]

  def _embed(self, input_ids, pixel_values, image_grid_thw, frame_patches):
    """(input_embeddings [B, T, D], the DeepStack additions the decoder's pass over the prompt takes:
    none for Qwen2.5-VL; Qwen3-VL's override returns per level a [B, T, D] array)."""
    x = self.language_model.embed(input_ids)
    if pixel_values is None:
      return x, ()
    feats = self.image_features(pixel_values, image_grid_thw, frame_patches)
    return place_image_features(input_ids == self.config.image_token_id, feats, x), ()

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
    c = self.config
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(f"input_ids: expected int [batch, length], got {input_ids.dtype} {input_ids.shape}")
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    attention_mask = jnp.asarray(attention_mask).astype(jnp.int32)
    if attention_mask.shape != input_ids.shape:
      raise ValueError(f"attention_mask: expected shape {input_ids.shape} like input_ids, got {attention_mask.shape}")
    if num_layers is not None and not 0 <= num_layers <= c.text.num_hidden_layers:
      raise ValueError(f"num_layers: expected 0..{c.text.num_hidden_layers}, got {num_layers}")
    if (pixel_values is None) != (image_grid_thw is None):
      raise ValueError("pixel_values and image_grid_thw must be given together "
                       f"(got pixel_values={'set' if pixel_values is not None else None}, "
                       f"image_grid_thw={'set' if image_grid_thw is not None else None})")
    if _concrete(input_ids) and _concrete(attention_mask):
      if np.any(np.asarray(attention_mask) & (np.asarray(input_ids) == c.image_token_id)) and pixel_values is None:
        raise ValueError(f"input_ids contain image tokens (id {c.image_token_id}) but no pixel_values were given")
    if pixel_values is None:
      return input_ids, attention_mask
    v = c.vision
    if pixel_values.ndim != 2 or pixel_values.shape[1] != v.patch_dim:
      raise ValueError(f"pixel_values: expected float [num_patches, {v.patch_dim}] "
                       f"(C*T*P*P), got shape {pixel_values.shape}")
    if image_grid_thw.ndim != 2 or image_grid_thw.shape[1] != 3:
      raise ValueError(f"image_grid_thw: expected int [num_images, 3], got shape {image_grid_thw.shape}")
    if _concrete(image_grid_thw):
      grid = np.asarray(image_grid_thw)
      m = v.spatial_merge_size
      if np.any(grid <= 0) or np.any(grid[:, 1:] % m):
        raise ValueError(f"image_grid_thw: rows must be positive with h, w multiples of {m}; got {grid.tolist()}")
      patches = int(np.prod(grid, axis=1).sum())
      if frame_patches and np.any(grid[:, 1] * grid[:, 2] != frame_patches):
        raise ValueError(f"frame_patches={frame_patches} promises h*w = {frame_patches} for every image, but "
                         f"image_grid_thw is {grid.tolist()}")
      if patches != pixel_values.shape[0]:
        raise ValueError(f"pixel_values has {pixel_values.shape[0]} patches but image_grid_thw "
                         f"{grid.tolist()} describes {patches}")
      if _concrete(input_ids):
        n_tok = int((np.asarray(input_ids) == c.image_token_id).sum())
        if n_tok != patches // (m * m):
          raise ValueError(f"input_ids hold {n_tok} image tokens (id {c.image_token_id}) but image_grid_thw "
                           f"{grid.tolist()} needs {patches // (m * m)} (t*h*w/{m * m} per image)")
    return input_ids, attention_mask


def place_image_features(is_img: jax.Array, feats: jax.Array, other: jax.Array) -> jax.Array:
  """is_img: bool [B, T]; feats: [N, D], one row per image token -> [B, T, D]: the k-th image token of
  the row-major flattened batch takes feats[k], every other token `other` (broadcast), in its dtype."""
  ordinal = jnp.cumsum(is_img.reshape(-1)) - 1
  picked = feats.astype(other.dtype)[jnp.clip(ordinal, 0, feats.shape[0] - 1)].reshape(*is_img.shape, -1)
  return jnp.where(is_img[..., None], picked, other)
