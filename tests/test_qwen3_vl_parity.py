"""Forward parity of the Flax Qwen3-VL with HF transformers (torch, fp32) on a tiny random
checkpoint: logits and every hidden state (HF's `output_hidden_states` convention, DeepStack
included) within 1e-4 x max|reference| on real positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen3_vl_reference import (TINY, errors, hf_forward, image_block, left_pad, loaded_tiny, random_pixels,
                                random_text)

TOL = 1e-4


@pytest.fixture(scope="module")
def loaded():
  model, params, hf_model = loaded_tiny()
  fwd = jax.jit(lambda p, ids, mask, pix, grid: model.apply(
      {"params": p}, ids, mask, pix, grid, output_hidden_states=True))
  return model, params, hf_model, fwd


def _check(loaded, ids, mask=None, pixels=None, grid=None, label=""):
  model, params, hf_model, fwd = loaded
  ref_logits, ref_hidden = hf_forward(hf_model, ids, mask, pixels, grid)
  out = fwd(params, jnp.asarray(ids), None if mask is None else jnp.asarray(mask),
            None if pixels is None else jnp.asarray(pixels), None if grid is None else jnp.asarray(grid))
  assert len(out.hidden_states) == len(ref_hidden) == TINY.text.num_hidden_layers + 1
  logit_err = errors(out.logits, ref_logits, mask)
  hidden_errs = [errors(h, r, mask) for h, r in zip(out.hidden_states, ref_hidden)]
  print(f"\n{label}: logits max abs {logit_err[0]:.2e} rel {logit_err[1]:.2e}; hidden states max abs "
        f"{max(e[0] for e in hidden_errs):.2e} rel {max(e[1] for e in hidden_errs):.2e}")
  assert logit_err[1] <= TOL, logit_err
  assert max(e[1] for e in hidden_errs) <= TOL, hidden_errs
  return out


def test_text_only(loaded):
  rng = np.random.default_rng(0)
  ids = np.array([random_text(rng, 24)], np.int32)
  _check(loaded, ids, label="text only")


@pytest.fixture(scope="module")
def one_image(loaded):
  """One image larger than the 8x8 learned position table (resampled), and our jitted output."""
  model, params, _, fwd = loaded
  rng = np.random.default_rng(1)
  grid = np.array([[1, 12, 20]], np.int32)
  ids = np.array([random_text(rng, 5) + image_block(grid[0]) + random_text(rng, 7)], np.int32)
  pixels = random_pixels(rng, grid)
  return ids, pixels, grid


def test_one_image(loaded, one_image):
  ids, pixels, grid = one_image
  _check(loaded, ids, None, pixels, grid, label="one image")


def test_two_images_of_different_sizes(loaded):
  rng = np.random.default_rng(2)
  grid = [[1, 16, 10], [1, 6, 18]]
  ids = np.array([random_text(rng, 3) + image_block(grid[0]) + random_text(rng, 4) + image_block(grid[1])
                  + random_text(rng, 6)], np.int32)
  _check(loaded, ids, None, random_pixels(rng, grid), np.array(grid, np.int32), label="two images")


def test_left_padded_batch(loaded):
  rng = np.random.default_rng(3)
  grid = [[1, 8, 12], [1, 10, 10]]
  ids, mask = left_pad([random_text(rng, 4) + image_block(grid[0]) + random_text(rng, 5),
                        random_text(rng, 2) + image_block(grid[1]) + random_text(rng, 3)])
  _check(loaded, ids, mask, random_pixels(rng, grid), np.array(grid, np.int32), label="left-padded batch")


def test_deepstack_reaches_the_decoder(loaded, one_image):
  """The DeepStack additions are the level features on image tokens and zero elsewhere (guards
  against the parity above passing with DeepStack dropped on both sides)."""
  model, params, _, _ = loaded
  ids, pixels, grid = map(jnp.asarray, one_image)
  embed = jax.jit(lambda p, ids, pix, grid: model.apply({"params": p}, ids, pix, grid, None, method=model._embed))
  x, deepstack = embed(params, ids, pixels, grid)
  assert len(deepstack) == len(TINY.vision.deepstack_visual_indexes)
  is_img = np.asarray(ids == TINY.image_token_id)
  for level in deepstack:
    np.testing.assert_array_equal(np.asarray(level)[~is_img], 0)
    assert np.abs(np.asarray(level)[is_img]).max() > 0.1 * np.abs(np.asarray(x)).max()


def test_stop_after_layer_returns_features(loaded, one_image):
  """num_layers=k (here inside the DeepStack levels) gives the full run's hidden states 0..k."""
  model, params, _, fwd = loaded
  ids, pixels, grid = map(jnp.asarray, one_image)
  full = fwd(params, ids, None, pixels, grid)
  out = jax.jit(lambda p, ids, pix, grid: model.apply({"params": p}, ids, None, pix, grid, num_layers=2))(
      params, ids, pixels, grid)
  assert out.logits is None and len(out.hidden_states) == 3
  for k in range(3):
    np.testing.assert_allclose(out.hidden_states[k], full.hidden_states[k], rtol=1e-6, atol=1e-6)
