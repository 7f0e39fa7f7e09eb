"""Building blocks shared by the vision tower and the text decoder: a Dense layer whose
parameters carry logical axis names, RMSNorm, and the SwiGLU MLP.

Parameter names mirror the HF module names (`weight` for norms, `gate_proj`...) so the
checkpoint converter maps them by path.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
