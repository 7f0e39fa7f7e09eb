"""The key/value cache of the text decoder for prefill + incremental decoding.

A plain pytree (no Flax mutable collections), so a sampler can carry it through
`jax.lax.while_loop` / `scan` and shard it like any array. Slots are filled left to right and
shared by all rows; a row's padding slots stay masked out. Keys and values are stored heads
first, [B, kv_heads, S, head_dim], the layout attention reads them in (`layers.grouped_attention`),
so a decode step never copies the cache.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
  keys: tuple[jax.Array, ...]    # per layer [B, kv_heads, S, head_dim], rotary already applied
  values: tuple[jax.Array, ...]  # per layer [B, kv_heads, S, head_dim]
  mask: jax.Array                # int32 [B, S]: 1 on slots holding a real token
  length: jax.Array              # int32 []: slots written so far (same for every row)
  next_position: jax.Array       # int32 [B]: M-RoPE position (t = h = w) of the next token
  rope_deltas: jax.Array         # int32 [B]: prompt's max position + 1 - its number of real tokens

  @property
  def max_length(self) -> int:
    return self.mask.shape[1]

  @classmethod
  def init(cls, batch: int, max_length: int, num_layers: int, kv_heads: int, head_dim: int,
           dtype=jnp.float32) -> "KVCache":
    shape = (batch, kv_heads, max_length, head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
    return cls(keys=zeros, values=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
               mask=jnp.zeros((batch, max_length), jnp.int32), length=jnp.zeros((), jnp.int32),
               next_position=jnp.zeros((batch,), jnp.int32), rope_deltas=jnp.zeros((batch,), jnp.int32))


def write(buffer: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
  """Writes new [B, kv_heads, T, head_dim] into buffer [B, kv_heads, S, head_dim] at slots
  index .. index + T - 1."""
  start = (0, 0, index, 0)
  return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), start)
