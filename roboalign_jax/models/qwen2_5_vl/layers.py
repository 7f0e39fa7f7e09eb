"""Building blocks shared by the vision tower and the text decoder: a Dense layer whose
parameters carry logical axis names, RMSNorm, the SwiGLU MLP, and grouped-query attention over
keys laid out heads-first (the KV cache's layout).

Parameter names mirror the HF module names (`weight` for norms, `gate_proj`...) so the
checkpoint converter maps them by path.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_default_init = nn.initializers.normal(stddev=0.02)


class Linear(nn.Module):
  """y = x @ kernel (+ bias). kernel: [in, out] named `axes`; bias: [out] named `axes[1]`."""
  features: int
  axes: tuple[str, str]
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(_default_init, self.axes),
                        (x.shape[-1], self.features), self.param_dtype)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axes[1],)),
                        (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class RMSNorm(nn.Module):
  """x / rms(x) * weight, the normalisation in fp32 as in HF, then cast back to x's dtype."""
  eps: float = 1e-6
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        (x.shape[-1],), self.param_dtype)
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return weight.astype(dtype) * xf.astype(dtype)


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x)); with bias in the vision tower, without in the text decoder."""
  intermediate_size: int
  use_bias: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    gate = Linear(self.intermediate_size, ("embed", "mlp"), name="gate_proj", **kw)(x)
    up = Linear(self.intermediate_size, ("embed", "mlp"), name="up_proj", **kw)(x)
    return Linear(x.shape[-1], ("mlp", "embed"), name="down_proj", **kw)(nn.silu(gate) * up)


@jax.named_scope("scores")  # names its ops in profiles (benchmarks/timing.py:xla_profile)
def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Softmax attention with K key/value heads shared by groups of N / K query heads.

  q: [B, T, N, D]; k, v: [B, K, S, D] (heads before positions, as the KV cache stores them);
  mask: bool [B, 1 or N, T, S] (True = may attend) or None -> [B, T, N, D] in q's dtype.

  The numbers of `jax.nn.dot_product_attention`'s XLA path (f32 logits scaled by 1/sqrt(D),
  masked to -0.7 * f32 max, softmax in f32, probabilities cast to v's dtype), in a layout that
  needs no transpose of the keys: that path wants [B, S, K, D], and a decode step then copied the
  whole cache of every layer into it (half the time of a CPU rollout step). The query groups of a
  key head are stacked along T, so each matmul is a plain batched one over (B, K).
  """
  b, t, n, d = q.shape
  heads, s = k.shape[1], k.shape[2]
  g = n // heads
  qg = q.reshape(b, t, heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b, heads, g * t, d)
  precision = jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if q.dtype == jnp.bfloat16 else None
  logits = jnp.einsum("bkqd,bksd->bkqs", qg, k.astype(q.dtype), precision=precision,
                      preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
  logits = (logits * jnp.asarray(1 / np.sqrt(d), logits.dtype)).reshape(b, heads, g, t, s)
  if mask is not None:
    grouped = mask[:, :, None] if mask.shape[1] == 1 else mask.reshape(mask.shape[0], heads, g, t, s)
    logits = jnp.where(grouped, logits, jnp.asarray(-0.7 * np.finfo(np.float32).max, logits.dtype))
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  out = jnp.einsum("bkqs,bksd->bkqd", probs.reshape(b, heads, g * t, s), v)
  return out.reshape(b, heads, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, n, d).astype(q.dtype)
