"""Qwen3-VL (vision tower + text decoder with DeepStack + LM head) as one Flax Linen module: a
subclass of `models/qwen2_5_vl/model.py`'s `Qwen2_5_VL`, with the same calls. It swaps in its own
vision tower and text decoder and, in `_embed`, scatters the DeepStack features the tower returns
(`image_features` -> (merged, per-level DeepStack features)) onto the image tokens for the decoder.

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
[B, kv_heads, S, head_dim] with rotary applied). DeepStack only touches image tokens, which are
all in the prompt, so decoding steps are plain decoder steps.

Positions are always computed from `attention_mask` (real tokens only), as HF does when it has
the image grids (and in `generate`), so left padding gives the same result as no padding.
"""

from __future__ import annotations

import jax.numpy as jnp

from roboalign_jax.models.qwen2_5_vl.kv_cache import KVCache
from roboalign_jax.models.qwen2_5_vl.model import Output, Qwen2_5_VL, place_image_features
from roboalign_jax.models.qwen3_vl.config import Qwen3VLConfig
from roboalign_jax.models.qwen3_vl.text import TextDecoder
from roboalign_jax.models.qwen3_vl.vision import VisionTower

__all__ = ["Qwen3VL", "Output", "KVCache"]


class Qwen3VL(Qwen2_5_VL):
  """Qwen3VLForConditionalGeneration. `config.dtype` is the compute dtype."""
  config: Qwen3VLConfig
  vision_tower_cls = VisionTower
  text_decoder_cls = TextDecoder

  def _embed(self, input_ids, pixel_values, image_grid_thw, frame_patches):
    """(input_embeddings [B, T, D], DeepStack additions: per level [B, T, D], zero off image tokens)."""
    x = self.language_model.embed(input_ids)
    if pixel_values is None:
      return x, ()
    merged, deepstack = self.image_features(pixel_values, image_grid_thw, frame_patches)
    is_img = input_ids == self.config.image_token_id
    zero = jnp.zeros((), x.dtype)
    return place_image_features(is_img, merged, x), tuple(place_image_features(is_img, f, zero) for f in deepstack)
