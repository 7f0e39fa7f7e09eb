"""Building blocks of the GR00T N1.5 action head, each numerically the same as its GR00T
(diffusers / torch) counterpart: a Linear with torch's init, non-affine and affine LayerNorm,
per-embodiment linear layers, the two sinusoidal timestep features, attention with optional
key masking, and the transformer block used by both the DiT (AdaLayerNorm, cross- or
self-attention) and the VL self-attention stack (affine LayerNorm, self-attention).

Every parameter carries logical axis names (see `roboalign_jax.parallel.sharding`); parameter
names follow GR00T's module names so `checkpoint_io` maps them by path.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def torch_linear_init(fan_in: int) -> Callable:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default for Linear weights and biases, which
  GR00T's DiT and VL blocks keep (a freshly initialised head should start where GR00T's does)."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class Dense(nn.Module):
  """torch.nn.Linear: y = x @ kernel + bias, kernel [in, out] (GR00T stores weight [out, in])."""
  features: int
  axes: tuple[str, str]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", nn.with_logical_partitioning(torch_linear_init(fan_in), self.axes),
                        (fan_in, self.features), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(torch_linear_init(fan_in), (self.axes[1],)),
                      (self.features,), self.param_dtype)
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """Non-affine LayerNorm over the last axis (biased variance, as torch), computed in fp32."""
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  centred = xf - mean
  var = jnp.mean(centred * centred, axis=-1, keepdims=True)
  return centred * jax.lax.rsqrt(var + eps)


class LayerNorm(nn.Module):
  """Affine LayerNorm (torch defaults: weight 1, bias 0); returns the compute dtype."""
  eps: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (d,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (d,), self.param_dtype)
    y = layer_norm(x, self.eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(self.dtype)


class EmbodimentLinear(nn.Module):
  """GR00T's CategorySpecificLinear: one [in, out] weight and [out] bias per embodiment.

  x [B, T, in], embodiment_id int [B] -> [B, T, out]. W: [E, in, out] ~ init_std N(0, 1) (GR00T:
  0.02; 0 = 1/sqrt(in)), b: [E, out] = 0.
  An id outside [0, E) selects NaN weights, so a bad id poisons its row's output instead of
  silently reading another embodiment's weights (JAX clamps out-of-range gathers).
  """
  features: int
  axes: tuple[str, str]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  num_embodiments: int = 32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x: jax.Array, embodiment_id: jax.Array) -> jax.Array:
    e = self.num_embodiments
    std = self.init_std or x.shape[-1] ** -0.5
    w = self.param("W", nn.with_logical_partitioning(nn.initializers.normal(std), ("embodiment", *self.axes)),
                   (e, x.shape[-1], self.features), self.param_dtype)
    b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros, ("embodiment", self.axes[1])),
                   (e, self.features), self.param_dtype)
    # take() would wrap negative ids around; send them past the end, where "fill" applies.
    ids = jnp.where(embodiment_id < 0, e, embodiment_id)
    w = jnp.take(w.astype(self.dtype), ids, axis=0, mode="fill", fill_value=jnp.nan)
    b = jnp.take(b.astype(self.dtype), ids, axis=0, mode="fill", fill_value=jnp.nan)
    return jnp.einsum("bti,bio->bto", x.astype(self.dtype), w) + b[:, None, :]


class EmbodimentMLP(nn.Module):
  """GR00T's CategorySpecificMLP: layer2(relu(layer1(x))), both per embodiment."""
  hidden: int
  features: int
  axes: tuple[str, str, str]  # input, hidden, output logical names
  num_embodiments: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x: jax.Array, embodiment_id: jax.Array) -> jax.Array:
    kw = dict(num_embodiments=self.num_embodiments, dtype=self.dtype, param_dtype=self.param_dtype,
              init_std=self.init_std)
    h = EmbodimentLinear(self.hidden, self.axes[:2], name="layer1", **kw)(x, embodiment_id)
    return EmbodimentLinear(self.features, self.axes[1:], name="layer2", **kw)(nn.relu(h), embodiment_id)


# ---- timestep features --------------------------------------------------------------------------
def dit_timestep_features(timesteps: jax.Array, channels: int = 256) -> jax.Array:
  """diffusers `Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=1)`.

  timesteps [B] (bucket indices) -> f32 [B, channels] = [cos | sin] of t * 10000^(-i / (half - 1)).
  """
  half = channels // 2
  exponent = -math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1)
  args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  out = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if channels % 2:
    out = jnp.pad(out, ((0, 0), (0, 1)))
  return out


def action_timestep_features(timesteps: jax.Array, width: int) -> jax.Array:
  """GR00T's SinusoidalPositionalEncoding of the action encoder.

  timesteps [B, T] (bucket indices) -> f32 [B, T, width] = [sin | cos] of t * 10000^(-i / half).
  """
  half = width // 2
  # The constant is log(10000) rounded to fp32 first, as the reference computes it.
  step = jnp.log(jnp.float32(10000.0)) / half
  freqs = jnp.exp(-jnp.arange(half, dtype=jnp.float32) * step)
  args = timesteps.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimestepEmbedding(nn.Module):
  """diffusers `TimestepEmbedding`: linear_2(silu(linear_1(x)))."""
  width: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = Dense(self.width, ("io", "mlp"), name="linear_1", **kw)(x)
    return Dense(self.width, ("mlp", "embed"), name="linear_2", **kw)(nn.silu(x))


class TimestepEncoder(nn.Module):
  """GR00T's TimestepEncoder: bucket index [B] -> temb [B, width] = MLP(sinusoid_256(t))."""
  width: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, timesteps: jax.Array) -> jax.Array:
    x = dit_timestep_features(timesteps).astype(self.dtype)
    return TimestepEmbedding(self.width, self.dtype, self.param_dtype, name="timestep_embedder")(x)


# ---- attention and blocks -----------------------------------------------------------------------
class Attention(nn.Module):
  """diffusers `Attention` (default processor): to_q/to_k/to_v/to_out with bias, softmax(q k^T / sqrt(d)),
  dropout after the output projection.

  x [B, T, width]; context [B, S, C] (None = self-attention); key_mask bool [B, S] (True = attend;
  None = every key, which is what GR00T does) -> [B, T, width]. `kv(context)` computes the keys
  and values alone, so a sampler can project the VL tokens once and pass `kv=` to every step.
  """
  width: int
  num_heads: int
  head_dim: int
  dropout: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    inner = self.num_heads * self.head_dim
    self.to_q = Dense(inner, ("embed", "heads"), **kw)
    self.to_k = Dense(inner, ("embed", "heads"), **kw)
    self.to_v = Dense(inner, ("embed", "heads"), **kw)
    self.to_out = Dense(self.width, ("heads", "embed"), **kw)
    self.out_dropout = nn.Dropout(self.dropout)

  def kv(self, context):
    """context [B, S, C] -> (keys, values), each [B, S, heads, head_dim]."""
    b, s, _ = context.shape
    split = lambda y: y.reshape(b, s, self.num_heads, self.head_dim)
    return split(self.to_k(context)), split(self.to_v(context))

  def __call__(self, x, context=None, key_mask=None, deterministic: bool = True, kv=None):
    b, t, _ = x.shape
    k, v = self.kv(x if context is None else context) if kv is None else kv
    q = self.to_q(x).reshape(b, t, self.num_heads, self.head_dim)
    mask = None if key_mask is None else key_mask[:, None, None, :].astype(bool)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    out = self.to_out(out.reshape(b, t, self.num_heads * self.head_dim))
    return self.out_dropout(out, deterministic=deterministic)


class AdaLayerNorm(nn.Module):
  """GR00T's AdaLayerNorm: LN(x) * (1 + scale) + shift, (scale, shift) = Linear(SiLU(temb)) in that
  order; LN without affine, eps 1e-5. x [B, T, D], temb [B, Dt] -> [B, T, D]."""
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb):
    d = x.shape[-1]
    mod = Dense(2 * d, ("embed", "mlp"), name="linear", dtype=self.dtype, param_dtype=self.param_dtype)(nn.silu(temb))
    mod = nn.with_logical_constraint(mod, ("batch", "embed"))
    scale, shift = jnp.split(mod.astype(jnp.float32), 2, axis=-1)
    return (layer_norm(x, 1e-5) * (1 + scale[:, None]) + shift[:, None]).astype(self.dtype)


class TransformerBlock(nn.Module):
  """diffusers `BasicTransformerBlock` as GR00T configures it:

      h = norm1(x [, temb]);  x = x + final_dropout(attn1(h, context))
      h = norm3(x);           x = x + dropout(ff_out(dropout(gelu_tanh(ff_in(h)))))

  `ada_norm=True` (DiT): norm1 is AdaLayerNorm, `LN(x) * (1 + scale) + shift` with
  (scale, shift) = Linear(SiLU(temb)), LN and norm3 without affine (eps 1e-5).
  `ada_norm=False` (VL self-attention): norm1 and norm3 are affine LayerNorms (eps 1e-5).
  x [B, T, width] -> [B, T, width]; `kv` as for `Attention` (precomputed from `context`).
  """
  width: int
  num_heads: int
  head_dim: int
  dropout: float
  final_dropout: bool
  ada_norm: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.ada_norm:
      self.norm1 = AdaLayerNorm(**kw)
    else:
      self.norm1 = LayerNorm(1e-5, **kw)
      self.norm3 = LayerNorm(1e-5, **kw)
    self.attn1 = Attention(self.width, self.num_heads, self.head_dim, self.dropout, **kw)
    self.ff_in = Dense(4 * self.width, ("embed", "mlp"), **kw)
    self.ff_out = Dense(self.width, ("mlp", "embed"), **kw)
    # Dropout sites: after attention (final_dropout), inside and at the end of the feed-forward.
    self.attn_dropout = nn.Dropout(self.dropout)
    self.ff_dropout = nn.Dropout(self.dropout)
    self.ff_final_dropout = nn.Dropout(self.dropout)

  def kv(self, context):
    return self.attn1.kv(context)

  def __call__(self, x, temb=None, context=None, key_mask=None, deterministic: bool = True, kv=None):
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    h = self.norm1(x, temb) if self.ada_norm else self.norm1(x)
    attn = self.attn1(h, context, key_mask, deterministic=deterministic, kv=kv)
    if self.final_dropout:
      attn = self.attn_dropout(attn, deterministic=deterministic)
    x = x + attn
    h = layer_norm(x, 1e-5).astype(self.dtype) if self.ada_norm else self.norm3(x)
    h = self.ff_dropout(nn.gelu(self.ff_in(h), approximate=True), deterministic=deterministic)
    h = self.ff_out(h)
    if self.final_dropout:
      h = self.ff_final_dropout(h, deterministic=deterministic)
    return nn.with_logical_constraint(x + h, ("batch", "length", "embed"))
