"""Qwen3-VL text decoder (a Qwen3 LM): token embedding, GQA decoder layers with per-head q/k
RMSNorm and interleaved M-RoPE, DeepStack injection, final RMSNorm.

Differences from the Qwen2.5-VL decoder (`qwen2_5_vl/text.py`): explicit `head_dim` (not
hidden / heads), no q/k/v bias, `q_norm` / `k_norm` (RMSNorm over head_dim, applied per head
before the rotary), interleaved M-RoPE sections, and DeepStack: after decoder layer i
(0-based, i < len(deepstack)) the i-th DeepStack vision feature is added to the hidden states of
the image tokens. Parameter names are those of the Qwen2.5-VL decoder where the modules
correspond (`embed_tokens/embedding`, `layers_i/self_attn/{q,k,v,o}_proj`, `layers_i/mlp/*`,
`input_layernorm`, `post_attention_layernorm`, `norm`) plus `self_attn/{q_norm,k_norm}/weight`,
so `qwen2_5_vl.vocab_extension.resize_vocabulary` and the logical-axis sharding rules apply as is.

Hidden states follow HF's `output_hidden_states` exactly (transformers records the *input* of
layer 0 and the *output* of every decoder layer with forward hooks, then replaces the last entry
with the final-normed state):

    hidden_states[0]      = token embeddings (image features scattered in), before any layer;
    hidden_states[k]      = output of decoder layer k-1, *before* the DeepStack addition that
                            follows it (HF adds DeepStack to a copy after the hook has fired);
                            the next layer's input is this plus DeepStack;
    hidden_states[L]      = norm(output of the last layer (+ its DeepStack when L <= levels)).

`num_layers=k < L` returns the first k + 1 entries (the last one un-normed), each equal to the
full run's entry.

Attention goes through `jax.nn.dot_product_attention` with a boolean mask that encodes causality
and padding; GQA is native there (no repeat).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from roboalign_jax.models.qwen2_5_vl import kv_cache
from roboalign_jax.models.qwen2_5_vl.layers import Linear, RMSNorm, SwiGLU
from roboalign_jax.models.qwen3_vl import rope
from roboalign_jax.models.qwen3_vl.config import TextConfig


class Attention(nn.Module):
  cfg: TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cos, sin, mask, kv=None, index=None):
    """x: [B, T, D]; cos/sin: [B, T, head_dim]; mask: bool [B, 1, T, S].

    Without `kv`, S = T (keys are this call's tokens). With `kv = (k_buf, v_buf)` of
    [B, S, kv_heads, head_dim], this call's keys/values are written at slot `index` and the
    queries attend over the whole buffer. Returns (out [B, T, D], (k_buf, v_buf) or None).
    """
    c = self.cfg
    b, t, _ = x.shape
    hd = c.head_dim
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    q = Linear(c.num_attention_heads * hd, ("embed", "heads"), name="q_proj", **kw)(x)
    k = Linear(c.num_key_value_heads * hd, ("embed", "kv_heads"), name="k_proj", **kw)(x)
    v = Linear(c.num_key_value_heads * hd, ("embed", "kv_heads"), name="v_proj", **kw)(x)
    q = RMSNorm(c.rms_norm_eps, self.param_dtype, name="q_norm")(q.reshape(b, t, c.num_attention_heads, hd))
    k = RMSNorm(c.rms_norm_eps, self.param_dtype, name="k_norm")(k.reshape(b, t, c.num_key_value_heads, hd))
    v = v.reshape(b, t, c.num_key_value_heads, hd)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    q, k = rope.apply_rotary(q, cos, sin), rope.apply_rotary(k, cos, sin)
    new_kv = None
    if kv is not None:
      k = kv_cache.write(kv[0], k, index)
      v = kv_cache.write(kv[1], v, index)
      new_kv = (k, v)
    out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask)
    out = out.reshape(b, t, c.num_attention_heads * hd)
    return Linear(c.hidden_size, ("heads", "embed"), name="o_proj", **kw)(out), new_kv


class DecoderLayer(nn.Module):
  cfg: TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cos, sin, mask, kv=None, index=None):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h, new_kv = Attention(c, name="self_attn", **kw)(
        RMSNorm(c.rms_norm_eps, self.param_dtype, name="input_layernorm")(x), cos, sin, mask, kv, index)
    x = x + h
    x = x + SwiGLU(c.intermediate_size, use_bias=False, name="mlp", **kw)(
        RMSNorm(c.rms_norm_eps, self.param_dtype, name="post_attention_layernorm")(x))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x, new_kv


class TextDecoder(nn.Module):
  cfg: TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False

  def setup(self):
    c = self.cfg
    self.embed_tokens = nn.Embed(
        c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
    layer = nn.remat(DecoderLayer, static_argnums=()) if self.remat else DecoderLayer
    self.layers = [layer(c, self.dtype, self.param_dtype, name=f"layers_{i}")
                   for i in range(c.num_hidden_layers)]
    self.norm = RMSNorm(c.rms_norm_eps, self.param_dtype)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """int [B, T] -> [B, T, D] in the compute dtype."""
    return self.embed_tokens(input_ids)

  def attend(self, x: jax.Array) -> jax.Array:
    """Tied output head: x [B, T, D] @ embedding.T -> [B, T, vocab]."""
    return self.embed_tokens.attend(x)

  def __call__(self, x: jax.Array, position_ids: jax.Array, mask: jax.Array, *,
               kv: Sequence[tuple[jax.Array, jax.Array]] | None = None, index=None,
               num_layers: int | None = None, deepstack: Sequence[jax.Array] = ()):
    """x: [B, T, D] embeddings; position_ids: int [3, B, T]; mask: bool [B, 1, T, S];
    deepstack: per level a [B, T, D] addition (the level's vision feature on image tokens, zero
    elsewhere), added after layer i for level i.

    Runs the first `num_layers` layers (all by default). Returns (hidden_states, new_kv), the
    hidden states as described in the module docstring.
    """
    c = self.cfg
    n = c.num_hidden_layers if num_layers is None else num_layers
    if len(deepstack) > c.num_hidden_layers:
      raise ValueError(f"{len(deepstack)} DeepStack levels for {c.num_hidden_layers} decoder layers")
    cos, sin = rope.interleaved_mrope_cos_sin(position_ids, c.head_dim, c.rope_theta, c.mrope_section)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    states = [x]
    new_kv = []
    for i in range(n):
      x, layer_kv = self.layers[i](x, cos, sin, mask, None if kv is None else kv[i], index)
      new_kv.append(layer_kv)
      states.append(x)
      if i < len(deepstack):
        x = x + deepstack[i].astype(x.dtype)
    if n == c.num_hidden_layers:
      states[-1] = self.norm(x)
    return states, (tuple(new_kv) if kv is not None else None)
