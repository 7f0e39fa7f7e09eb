"""Qwen2.5-VL text decoder: token embedding, GQA decoder layers with M-RoPE, final RMSNorm.

The Qwen3-VL decoder (`qwen3_vl/text.py`) is this one with three module settings changed
(`qkv_bias`, `qk_norm`, `rope_cos_sin`) and DeepStack features passed to the call (`deepstack`);
the defaults here are Qwen2.5-VL's.

Attention goes through `layers.grouped_attention` (the numbers of jax.nn.dot_product_attention's
XLA path, with keys heads-first as the KV cache holds them) with a boolean mask that encodes
causality and padding; GQA is native there (no repeat of the key heads).
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from roboalign_jax.models.qwen2_5_vl import kv_cache, rope
from roboalign_jax.models.qwen2_5_vl.config import TextConfig
from roboalign_jax.models.qwen2_5_vl.layers import Linear, RMSNorm, SwiGLU, grouped_attention


class Attention(nn.Module):
  """q/k/v projections (with bias when `qkv_bias`), optionally a per-head RMSNorm of q and k over
  head_dim before the rotary (`qk_norm`, Qwen3), rotary, attention, o_proj (never a bias)."""
  cfg: TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  qkv_bias: bool = True
  qk_norm: bool = False

  @nn.compact
  def __call__(self, x, cos, sin, mask, kv=None, index=None):
    """x: [B, T, D]; cos/sin: [B, T, head_dim]; mask: bool [B, 1, T, S].

    Without `kv`, S = T (keys are this call's tokens). With `kv = (k_buf, v_buf)` of
    [B, kv_heads, S, head_dim], this call's keys/values are written at slot `index` and the
    queries attend over the whole buffer. Returns (out [B, T, D], (k_buf, v_buf) or None).
    """
    c = self.cfg
    b, t, _ = x.shape
    hd = c.head_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = dict(use_bias=self.qkv_bias, **kw)
    q = Linear(c.num_attention_heads * hd, ("embed", "heads"), name="q_proj", **qkv)(x)
    k = Linear(c.num_key_value_heads * hd, ("embed", "kv_heads"), name="k_proj", **qkv)(x)
    v = Linear(c.num_key_value_heads * hd, ("embed", "kv_heads"), name="v_proj", **qkv)(x)
    q = q.reshape(b, t, c.num_attention_heads, hd)
    k = k.reshape(b, t, c.num_key_value_heads, hd)
    v = v.reshape(b, t, c.num_key_value_heads, hd)
    if self.qk_norm:
      q = RMSNorm(c.rms_norm_eps, self.param_dtype, name="q_norm")(q)
      k = RMSNorm(c.rms_norm_eps, self.param_dtype, name="k_norm")(k)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    q, k = rope.apply_rotary(q, cos, sin), rope.apply_rotary(k, cos, sin)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # heads first: [B, kv_heads, T, head_dim]
    new_kv = None
    if kv is not None:
      k = kv_cache.write(kv[0], k, index)
      v = kv_cache.write(kv[1], v, index)
      new_kv = (k, v)
    out = grouped_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
    out = out.reshape(b, t, c.num_attention_heads * hd)
    return Linear(c.hidden_size, ("heads", "embed"), use_bias=False, name="o_proj", **kw)(out), new_kv


class DecoderLayer(nn.Module):
  cfg: TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  qkv_bias: bool = True
  qk_norm: bool = False

  @nn.compact
  def __call__(self, x, cos, sin, mask, kv=None, index=None):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attention = Attention(c, qkv_bias=self.qkv_bias, qk_norm=self.qk_norm, name="self_attn", **kw)
    h, new_kv = attention(RMSNorm(c.rms_norm_eps, self.param_dtype, name="input_layernorm")(x), cos, sin, mask,
                          kv, index)
    x = x + h
    x = x + SwiGLU(c.intermediate_size, use_bias=False, name="mlp", **kw)(
        RMSNorm(c.rms_norm_eps, self.param_dtype, name="post_attention_layernorm")(x))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x, new_kv


class TextDecoder(nn.Module):
  """`qkv_bias`, `qk_norm`: see `Attention`; `rope_cos_sin(position_ids, head_dim, theta, sections)`
  -> (cos, sin) [B, T, head_dim]: how the M-RoPE sections share out the frequencies."""
  cfg: TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False
  qkv_bias: bool = True
  qk_norm: bool = False
  rope_cos_sin: Callable = rope.mrope_cos_sin

  def setup(self):
    c = self.cfg
    self.embed_tokens = nn.Embed(
        c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
    layer = nn.remat(DecoderLayer, static_argnums=()) if self.remat else DecoderLayer
    self.layers = [layer(c, self.dtype, self.param_dtype, self.qkv_bias, self.qk_norm, name=f"layers_{i}")
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
    deepstack (Qwen3-VL): per level a [B, T, D] addition (the level's vision feature on image
    tokens, zero elsewhere), added to the output of layer i for level i.

    Runs the first `num_layers` layers (all by default). Returns (hidden_states, new_kv) where
    hidden_states is a list in the HF convention: [embeddings, after layer 1, ..., after layer
    k-1, final] and the last entry is final-normed only when every layer ran. A layer's entry is
    its output before its DeepStack addition (HF records it with a hook that fires first).
    """
    c = self.cfg
    n = c.num_hidden_layers if num_layers is None else num_layers
    if len(deepstack) > c.num_hidden_layers:
      raise ValueError(f"{len(deepstack)} DeepStack levels for {c.num_hidden_layers} decoder layers")
    cos, sin = self.rope_cos_sin(position_ids, c.head_dim, c.rope_theta, c.mrope_section)
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
