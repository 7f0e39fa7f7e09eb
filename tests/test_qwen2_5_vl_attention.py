"""`layers.grouped_attention` (keys heads-first, the KV cache's layout) gives the numbers of
`jax.nn.dot_product_attention`'s XLA path: grouped query heads, per-head and broadcast masks,
a fully masked query row, float32 and bfloat16, and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roboalign_jax.models.qwen2_5_vl.layers import grouped_attention


def _inputs(rng, b, t, s, heads, kv_heads, d, dtype):
  q = jnp.asarray(rng.normal(size=(b, t, heads, d)), dtype)
  k = jnp.asarray(rng.normal(size=(b, s, kv_heads, d)), dtype)
  v = jnp.asarray(rng.normal(size=(b, s, kv_heads, d)), dtype)
  return q, k, v


def _heads_first(x):
  return x.transpose(0, 2, 1, 3)


@pytest.mark.parametrize("heads,kv_heads,per_head_mask", [(4, 2, False), (4, 4, True), (6, 2, True), (3, 1, False)])
def test_grouped_attention_equals_dot_product_attention(heads, kv_heads, per_head_mask):
  rng = np.random.default_rng(heads * 10 + kv_heads)
  b, t, s, d = 2, 5, 9, 16
  q, k, v = _inputs(rng, b, t, s, heads, kv_heads, d, jnp.float32)
  mask = rng.random((b, heads if per_head_mask else 1, t, s)) < 0.6
  mask[0, :, 1] = False  # a query that may attend to nothing: uniform over all keys in both
  mask = jnp.asarray(mask)
  want = jax.nn.dot_product_attention(q, k, v, mask=mask)
  got = grouped_attention(q, _heads_first(k), _heads_first(v), mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grouped_attention(q, _heads_first(k), _heads_first(v))),
                             np.asarray(jax.nn.dot_product_attention(q, k, v)), rtol=1e-6, atol=1e-6)

  def loss(fn, q, k, v):
    return (fn(q, k, v) ** 2).sum()
  want_g = jax.grad(lambda q, k, v: loss(lambda *a: jax.nn.dot_product_attention(*a, mask=mask), q, k, v),
                    argnums=(0, 1, 2))(q, k, v)
  got_g = jax.grad(lambda q, k, v: loss(lambda q, k, v: grouped_attention(q, _heads_first(k), _heads_first(v), mask),
                                        q, k, v), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def test_grouped_attention_bfloat16_matches_within_bf16_rounding():
  rng = np.random.default_rng(0)
  q, k, v = _inputs(rng, 2, 7, 7, 4, 2, 16, jnp.bfloat16)
  mask = jnp.tril(jnp.ones((7, 7), bool))[None, None]
  want = jax.nn.dot_product_attention(q, k, v, mask=mask)
  got = grouped_attention(q, _heads_first(k), _heads_first(v), mask)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=2e-2)
