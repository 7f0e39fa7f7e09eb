"""Rollout sampler: greedy equals the backbone's KV-cache greedy decoding and transformers'
generate; returned log-probs equal a teacher-forced full forward; samples differ within a group;
EOS / mask / padding; top-k and top-p; an image prompt with left padding; sharded == unsharded
on 8 emulated CPU devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from qwen2_5_vl_reference import TINY, image_block, loaded_tiny, random_pixels, random_text
from roboalign_jax.models import qwen2_5_vl
from roboalign_jax.parallel.mesh import create_mesh
from roboalign_jax.parallel.sharding import DEFAULT_RULES
from roboalign_jax.rl import grpo, rollout

import sharding_helpers

N = 12
PAD = 0


@pytest.fixture(scope="module")
def loaded():
  return loaded_tiny()


def image_prompts():
  """Two left-padded prompts with one image each (different grids and text lengths)."""
  rng = np.random.default_rng(5)
  grid = np.array([[1, 8, 12], [1, 6, 10]], np.int32)
  rows = [random_text(rng, 3) + image_block(grid[0]) + random_text(rng, 6),
          random_text(rng, 7) + image_block(grid[1]) + random_text(rng, 2)]
  ids, mask = left_pad(rows)
  return ids, mask, random_pixels(rng, grid), grid


def text_prompts(batch=2, seed=0):
  rng = np.random.default_rng(seed)
  return left_pad([random_text(rng, 4 + 3 * b) for b in range(batch)])


def left_pad(rows):
  t = max(map(len, rows))
  ids = np.full((len(rows), t), PAD, np.int32)
  mask = np.zeros((len(rows), t), np.int32)
  for b, row in enumerate(rows):
    ids[b, t - len(row):] = row
    mask[b, t - len(row):] = 1
  return ids, mask


def cached_greedy(model, params, ids, mask, pixels, grid, steps):
  """Greedy decoding by hand with the backbone's prefill / decode_step (the reference)."""
  prefill = jax.jit(functools.partial(model.apply, method=model.prefill, max_length=ids.shape[1] + steps))
  step = jax.jit(functools.partial(model.apply, method=model.decode_step))
  logits, cache = prefill({"params": params}, ids, mask, pixels, grid)
  tokens, logps = [], []
  for _ in range(steps):
    tok = jnp.argmax(logits, -1).astype(jnp.int32)
    tokens.append(tok)
    logps.append(jax.nn.log_softmax(logits, -1)[jnp.arange(tok.shape[0]), tok])
    logits, cache = step({"params": params}, tok, cache)
  return np.stack(tokens, 1), np.stack(logps, 1)


@functools.partial(jax.jit, static_argnums=0)  # eager dispatch of the forward is several times slower
def _forward(model, params, ids, mask, pixels, grid):
  return model.apply({"params": params}, ids, mask, pixels, grid).logits


def full_forward_logprobs(model, params, ids, mask, pixels, grid, out, num_samples, temperature):
  """Teacher-forced log-probs of the sampled tokens: one forward over prompt + response."""
  g = num_samples
  rows_ids = np.concatenate([np.repeat(ids, g, 0), np.asarray(out.tokens)], 1)
  rows_mask = np.concatenate([np.repeat(mask, g, 0), np.asarray(out.mask).astype(np.int32)], 1)
  if pixels is not None:  # each repeated row brings its own copy of its prompt's image
    sizes = np.prod(grid, 1)
    blocks = np.split(pixels, np.cumsum(sizes)[:-1])
    pixels = np.concatenate([blk for blk in blocks for _ in range(g)])
    grid = np.repeat(grid, g, 0)
  logits = _forward(model, params, jnp.asarray(rows_ids), jnp.asarray(rows_mask),
                    None if pixels is None else jnp.asarray(pixels), None if grid is None else jnp.asarray(grid))
  t = ids.shape[1]
  step_logits = logits[:, t - 1:t - 1 + out.tokens.shape[1]]
  return np.asarray(grpo.token_logprobs(step_logits, out.tokens, temperature)), np.asarray(step_logits)


def test_greedy_equals_kv_cache_greedy_and_transformers(loaded):
  model, params, hf_model = loaded
  ids, mask, pixels, grid = image_prompts()
  out = rollout.generate(model, params, ids, mask, pixels, grid, max_new_tokens=N, temperature=0.0,
                         num_samples=2)
  want_tokens, want_logps = cached_greedy(model, params, *map(jnp.asarray, (ids, mask, pixels, grid)), N)
  tokens = np.asarray(out.tokens)
  assert tokens.dtype == np.int32 and tokens.shape == (4, N)
  np.testing.assert_array_equal(tokens, np.repeat(want_tokens, 2, 0))  # both samples of a prompt
  np.testing.assert_allclose(np.asarray(out.logprobs), np.repeat(want_logps, 2, 0), atol=1e-5)
  assert np.asarray(out.mask).all() and int(out.num_steps) == N
  tids = torch.as_tensor(ids, dtype=torch.long)
  with torch.no_grad():
    ref = hf_model.generate(
        input_ids=tids, attention_mask=torch.as_tensor(mask, dtype=torch.long),
        pixel_values=torch.as_tensor(pixels), image_grid_thw=torch.as_tensor(grid, dtype=torch.long),
        mm_token_type_ids=(tids == TINY.image_token_id).int(), do_sample=False,
        max_new_tokens=N, min_new_tokens=N, pad_token_id=PAD)
  np.testing.assert_array_equal(tokens[::2], ref[:, ids.shape[1]:].numpy())


def test_logprobs_equal_full_forward_with_images(loaded):
  model, params, _ = loaded
  ids, mask, pixels, grid = image_prompts()
  temperature = 0.7
  out = rollout.generate(model, params, ids, mask, pixels, grid, max_new_tokens=N, temperature=temperature,
                         num_samples=2, rng=jax.random.key(3))
  want, _ = full_forward_logprobs(model, params, ids, mask, pixels, grid, out, 2, temperature)
  err = np.abs(np.asarray(out.logprobs) - want).max()
  print(f"rollout vs full-forward log-prob max abs err {err:.2e}")
  assert err <= 1e-5


# The text-prompt tests share prompts, N and G so they share compiled programs.
G = 3


def test_samples_of_one_prompt_differ(loaded):
  model, params, _ = loaded
  ids, mask = text_prompts(2)
  kw = dict(max_new_tokens=N, temperature=1.0, num_samples=G)
  out = rollout.generate(model, params, ids, mask, rng=jax.random.key(0), **kw)
  tokens = np.asarray(out.tokens).reshape(2, G, N)
  for group in tokens:
    assert len({tuple(row) for row in group}) == G
  again = rollout.generate(model, params, ids, mask, rng=jax.random.key(0), **kw)
  np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(out.tokens))
  other = rollout.generate(model, params, ids, mask, rng=jax.random.key(1), **kw)
  assert not np.array_equal(np.asarray(other.tokens), np.asarray(out.tokens))


def test_eos_stops_each_row_and_pads(loaded):
  model, params, _ = loaded
  ids, mask = text_prompts(2)
  kw = dict(max_new_tokens=N, temperature=1.0, num_samples=G, rng=jax.random.key(7))
  free_out = rollout.generate(model, params, ids, mask, **kw)
  free, free_logps = np.asarray(free_out.tokens), np.asarray(free_out.logprobs)
  # Two EOS ids taken from the free-running samples: rows end at their first occurrence.
  eos = [int(free[0, 5]), int(free[3, 2])]
  out = rollout.generate(model, params, ids, mask, eos_token_id=eos, pad_token_id=PAD, **kw)
  tokens, valid, logps = np.asarray(out.tokens), np.asarray(out.mask), np.asarray(out.logprobs)
  ended = 0
  for r in range(free.shape[0]):
    hits = np.flatnonzero(np.isin(free[r], eos))
    length = hits[0] + 1 if hits.size else N
    ended += hits.size > 0
    np.testing.assert_array_equal(tokens[r, :length], free[r, :length])
    np.testing.assert_array_equal(tokens[r, length:], PAD)
    np.testing.assert_array_equal(logps[r, :length], free_logps[r, :length])
    np.testing.assert_array_equal(logps[r, length:], 0.0)
    np.testing.assert_array_equal(valid[r], np.arange(N) < length)
  assert ended >= 2
  np.testing.assert_array_equal(np.asarray(out.lengths), valid.sum(1))
  # When every row has ended the loop stops early: here all at their first token.
  all_eos = rollout.generate(model, params, ids, mask, eos_token_id=np.unique(free[:, 0]), **kw)
  assert int(all_eos.num_steps) == 1
  assert np.asarray(all_eos.mask)[:, 0].all() and not np.asarray(all_eos.mask)[:, 1:].any()


def test_top_k_and_top_p_filters(loaded):
  model, params, _ = loaded
  ids, mask = text_prompts(2)
  greedy = rollout.generate(model, params, ids, mask, max_new_tokens=N, temperature=0.0, num_samples=G)
  for filt in (dict(top_k=1), dict(top_p=1e-6)):
    out = rollout.generate(model, params, ids, mask, max_new_tokens=N, temperature=1.0, num_samples=G,
                           rng=jax.random.key(2), **filt)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(greedy.tokens))
    # Log-probs stay those of the unfiltered distribution (here temperature 1 = greedy's).
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(greedy.logprobs), atol=1e-6)
  # top-k = 5: every sampled token is among the 5 largest logits at its position; top-p = 0.3:
  # the probability mass of tokens more likely than the sampled one is below 0.3.
  for filt, temperature in ((dict(top_k=5), 1.0), (dict(top_p=0.3), 0.5)):
    out = rollout.generate(model, params, ids, mask, max_new_tokens=N, temperature=temperature, num_samples=G,
                           rng=jax.random.key(4), **filt)
    _, logits = full_forward_logprobs(model, params, ids, mask, None, None, out, G, temperature)
    tokens = np.asarray(out.tokens)
    picked = np.take_along_axis(logits, tokens[..., None], -1)
    if "top_k" in filt:
      assert ((logits > picked).sum(-1) < 5).all()
    else:
      z = logits.astype(np.float64) / temperature
      p = np.exp(z - z.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      mass_above = (p * (logits > picked)).sum(-1)
      assert (mass_above < 0.3 + 1e-5).all()
      assert len(np.unique(tokens)) > 1


@pytest.mark.parametrize("case", ["image-prompts-prefill-replicated", "text-prompts-prefill-split"])
def test_sharded_equals_unsharded(loaded, case):
  model, params, _ = loaded
  if case.startswith("image"):  # 2 prompts x 2 samples: the prompts alone do not split 4 ways
    ids, mask, pixels, grid = image_prompts()
    samples, temperatures = 2, (0.0, 1.0)
  else:  # 4 prompts x 2 samples: the prefill is split too
    (ids, mask), pixels, grid = text_prompts(4, seed=3), None, None
    samples, temperatures = 2, (0.0,)
  mesh = create_mesh(dict(data=2, fsdp=2, tensor=2))
  sharded = sharding_helpers.shard_params(qwen2_5_vl.abstract_params(model), params, mesh)
  # Greedy must agree exactly; sampling too, as the PRNG (threefry, partitionable) does not
  # depend on the sharding.
  for temperature in temperatures:
    kw = dict(max_new_tokens=N, temperature=temperature, num_samples=samples, rng=jax.random.key(9))
    want = rollout.generate(model, params, ids, mask, pixels, grid, **kw)
    got = rollout.generate(model, sharded, ids, mask, pixels, grid, mesh=mesh, rules=DEFAULT_RULES, **kw)
    assert got.tokens.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(want.logprobs), atol=1e-5)


def test_bad_inputs(loaded):
  model, params, _ = loaded
  ids, mask = text_prompts(2)
  right_padded = mask[:, ::-1].copy()
  with pytest.raises(ValueError, match="left-padded"):
    rollout.generate(model, params, ids, right_padded, max_new_tokens=2, temperature=0.0)
  with pytest.raises(ValueError, match="rng"):
    rollout.generate(model, params, ids, mask, max_new_tokens=2)
  with pytest.raises(ValueError, match="top_p"):
    rollout.generate(model, params, ids, mask, max_new_tokens=2, temperature=0.0, top_p=0.0)
  with pytest.raises(ValueError, match="num_samples"):
    rollout.generate(model, params, ids, mask, max_new_tokens=2, temperature=0.0, num_samples=0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    rollout.generate(model, params, ids, mask, max_new_tokens=0, temperature=0.0)
  with pytest.raises(ValueError, match="eos_token_id"):
    rollout.generate(model, params, ids, mask, max_new_tokens=2, temperature=0.0, eos_token_id=2.5)
  with pytest.raises(ValueError, match="do not split over"):
    rollout.generate(model, params, ids, mask, max_new_tokens=2, temperature=0.0, num_samples=3,
                     mesh=create_mesh(dict(data=2, fsdp=2, tensor=2)))
