"""The sampler's per-step kernels: `first_argmax` is `jnp.argmax` (first maximum, first NaN), so
greedy tokens and Gumbel-max samples are those of `jnp.argmax` / `jax.random.categorical`; the
bisection nucleus filter keeps exactly the tokens whose strictly-more-likely mass is < top_p (up
to float32 rounding of that mass), ties included, and agrees with a sort-based filter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roboalign_jax.models.sampling import _top_p_filter, first_argmax


def test_first_argmax_is_argmax_with_ties_infinities_and_nans():
  rng = np.random.default_rng(1)
  for trial in range(60):
    x = rng.normal(size=(6, 33)).astype(np.float32)
    x[0, [3, 20]] = 9.0            # tie: the first wins
    x[1] = 1.0                     # all equal
    x[2, rng.integers(33, size=2)] = np.nan  # NaN wins, the first one
    x[3] = -np.inf
    x[4, [5, 7]] = np.inf
    x[5] = rng.integers(0, 3, size=33)  # many ties
    np.testing.assert_array_equal(np.asarray(first_argmax(jnp.asarray(x))), np.asarray(jnp.argmax(x, -1)))


def test_gumbel_max_with_first_argmax_draws_what_categorical_draws():
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(16, 300)), jnp.float32)
  logits = logits.at[:, :40].set(-jnp.inf)  # filtered tokens, as top-k / top-p leave them
  for seed in range(5):
    key = jax.random.key(seed)
    ours = first_argmax(jax.random.gumbel(key, logits.shape, logits.dtype) + logits)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(jax.random.categorical(key, logits)))
    assert int(ours.min()) >= 40


def _sorted_nucleus(logits, top_p):
  """Reference: sort, cumulative mass before each token, keep while it is < top_p (and ties)."""
  ordered = np.sort(logits, -1)[:, ::-1]
  z = ordered - ordered[:, :1]
  p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  before = np.cumsum(p, -1) - p
  threshold = np.where(before < top_p, ordered, np.inf).min(-1, keepdims=True)
  return logits >= threshold


_jitted_top_p_filter = jax.jit(_top_p_filter)


@pytest.mark.parametrize("top_p", [1e-6, 0.3, 0.9, 0.95, 0.999])
def test_top_p_filter_keeps_the_nucleus(top_p):
  rng = np.random.default_rng(int(top_p * 1000))
  for trial in range(20):
    logits = (rng.normal(size=(6, 257)) * rng.uniform(0.2, 4)).astype(np.float32)
    if trial % 3 == 0:
      logits = np.round(logits)  # many ties
    if trial % 4 == 0:
      logits[:, :60] = -np.inf    # already filtered (top-k, suppressed ids)
    filtered = np.asarray(_jitted_top_p_filter(jnp.asarray(logits), top_p))
    kept = np.isfinite(filtered)
    np.testing.assert_array_equal(filtered[kept], logits[kept])
    p = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1), np.float64)
    for row in range(6):
      more_likely = (p[row][None, :] > p[row][:, None]) @ p[row]  # per token: mass strictly above it
      assert kept[row, np.argmax(p[row])]
      assert (more_likely[kept[row]] < top_p + 1e-5).all()
      assert (more_likely[~kept[row]] >= top_p - 1e-5).all()
      assert not kept[row, p[row] == 0].any()
    same = (kept == _sorted_nucleus(logits, top_p)).all(-1)
    assert same.mean() >= 5 / 6  # differences only where the boundary mass rounds differently
