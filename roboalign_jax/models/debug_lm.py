"""A tiny per-token MLP language model for exercising the training machinery before (and
independently of) the Qwen2.5-VL backbone. Every parameter carries logical axis names, so the
same sharding rules that split the backbone split this model (FSDP over `embed`, tensor
parallelism over `mlp` and `vocab`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_part = nn.with_logical_partitioning


class DebugLM(nn.Module):
  vocab_size: int
  embed_dim: int
  mlp_dim: int
  num_layers: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """tokens int32 [B, T] -> logits float32 [B, T, vocab]."""
    x = nn.Embed(self.vocab_size, self.embed_dim,
                 embedding_init=_part(nn.initializers.normal(0.02), ("vocab", "embed")))(tokens)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    for i in range(self.num_layers):
      h = nn.RMSNorm(scale_init=_part(nn.initializers.ones, ("norm",)), name=f"norm_{i}")(x)
      h = nn.Dense(self.mlp_dim, name=f"up_{i}",
                   kernel_init=_part(nn.initializers.lecun_normal(), ("embed", "mlp")),
                   bias_init=_part(nn.initializers.zeros, ("mlp",)))(h)
      h = nn.with_logical_constraint(nn.gelu(h), ("batch", "length", "mlp"))
      h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
      h = nn.Dense(self.embed_dim, name=f"down_{i}",
                   kernel_init=_part(nn.initializers.lecun_normal(), ("mlp", "embed")),
                   bias_init=_part(nn.initializers.zeros, ("embed",)))(h)
      x = nn.with_logical_constraint(x + h, ("batch", "length", "embed"))
    x = nn.RMSNorm(scale_init=_part(nn.initializers.ones, ("norm",)), name="final_norm")(x)
    logits = nn.Dense(self.vocab_size, use_bias=False, name="head",
                      kernel_init=_part(nn.initializers.lecun_normal(), ("embed", "vocab")))(x)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))
