"""Forward parity of the Flax Qwen2.5-VL with HF transformers (torch, fp32) on a tiny random
checkpoint: logits and every hidden state within 1e-4 x max|reference| on real positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen2_5_vl_reference import (TINY, hf_forward, hf_tiny, image_block, max_rel_err, random_pixels,
                                  random_text)
from roboalign_jax.models import qwen2_5_vl

TOL = 1e-4


@pytest.fixture(scope="module")
def loaded():
  hf_dir, hf_model = hf_tiny()
  model, params = qwen2_5_vl.load_pretrained(hf_dir)
  fwd = jax.jit(lambda p, ids, mask, pix, grid: model.apply(
      {"params": p}, ids, mask, pix, grid, output_hidden_states=True))
  return model, params, hf_model, fwd


def _check(loaded, ids, mask=None, pixels=None, grid=None, label=""):
  model, params, hf_model, fwd = loaded
  ref_logits, ref_hidden = hf_forward(hf_model, ids, mask, pixels, grid)
  out = fwd(params, jnp.asarray(ids), None if mask is None else jnp.asarray(mask),
            None if pixels is None else jnp.asarray(pixels), None if grid is None else jnp.asarray(grid))
  assert len(out.hidden_states) == len(ref_hidden) == TINY.text.num_hidden_layers + 1
  errs = [max_rel_err(out.logits, ref_logits, mask)]
  errs += [max_rel_err(h, r, mask) for h, r in zip(out.hidden_states, ref_hidden)]
  print(f"{label}: logits rel err {errs[0]:.2e}, hidden states max rel err {max(errs[1:]):.2e}")
  assert errs[0] <= TOL, errs
  assert max(errs[1:]) <= TOL, errs
  return errs


def test_text_only(loaded):
  rng = np.random.default_rng(0)
  ids = np.array([random_text(rng, 24)], np.int32)
  _check(loaded, ids, label="text only")


def test_one_image(loaded):
  rng = np.random.default_rng(1)
  grid = [[1, 12, 20]]  # 3 x 5 windows of 8x8 patches, partial ones at the edges
  ids = np.array([random_text(rng, 5) + image_block(grid[0]) + random_text(rng, 7)], np.int32)
  _check(loaded, ids, None, random_pixels(rng, grid), np.array(grid, np.int32), label="one image")


def test_two_images_of_different_sizes(loaded):
  rng = np.random.default_rng(2)
  grid = [[1, 16, 10], [1, 6, 18]]
  ids = np.array([random_text(rng, 3) + image_block(grid[0]) + random_text(rng, 4) + image_block(grid[1])
                  + random_text(rng, 6)], np.int32)
  _check(loaded, ids, None, random_pixels(rng, grid), np.array(grid, np.int32), label="two images")


def test_left_padded_batch(loaded):
  rng = np.random.default_rng(3)
  grid = [[1, 8, 12], [1, 10, 10]]
  row0 = random_text(rng, 4) + image_block(grid[0]) + random_text(rng, 5)
  row1 = random_text(rng, 2) + image_block(grid[1]) + random_text(rng, 3)
  t = max(len(row0), len(row1))
  ids = np.zeros((2, t), np.int32)
  mask = np.zeros((2, t), np.int32)
  for b, row in enumerate((row0, row1)):
    ids[b, t - len(row):] = row
    mask[b, t - len(row):] = 1
  _check(loaded, ids, mask, random_pixels(rng, grid), np.array(grid, np.int32), label="left-padded batch")


def test_padding_does_not_change_real_positions(loaded):
  """A left-padded row gives the same outputs as the same row alone (M-RoPE counts real tokens)."""
  model, params, _, fwd = loaded
  rng = np.random.default_rng(4)
  grid = np.array([[1, 8, 8]], np.int32)
  row = random_text(rng, 3) + image_block(grid[0]) + random_text(rng, 4)
  pixels = jnp.asarray(random_pixels(rng, grid))
  alone = fwd(params, jnp.asarray([row]), None, pixels, jnp.asarray(grid))
  padded = fwd(params, jnp.asarray([[0] * 5 + row]), jnp.asarray([[0] * 5 + [1] * len(row)]), pixels,
               jnp.asarray(grid))
  np.testing.assert_allclose(padded.logits[:, 5:], alone.logits, rtol=1e-5, atol=1e-5)


def test_stop_after_layer_returns_features(loaded):
  model, params, _, fwd = loaded
  rng = np.random.default_rng(5)
  ids = jnp.asarray([random_text(rng, 10)])
  full = fwd(params, ids, None, None, None)
  out = model.apply({"params": params}, ids, num_layers=2)
  assert out.logits is None and len(out.hidden_states) == 3
  np.testing.assert_allclose(out.hidden_states[2], full.hidden_states[2], rtol=1e-6, atol=1e-6)


def test_remat_gives_same_gradients(loaded):
  model, params, _, _ = loaded
  remat_model = qwen2_5_vl.Qwen2_5_VL(model.config.replace(remat=True))
  rng = np.random.default_rng(6)
  grid = np.array([[1, 8, 8]], np.int32)
  ids = jnp.asarray([random_text(rng, 3) + image_block(grid[0]) + random_text(rng, 4)])
  pixels, grid = jnp.asarray(random_pixels(rng, grid)), jnp.asarray(grid)

  def loss(m):
    return lambda p: m.apply({"params": p}, ids, None, pixels, grid).logits.std()

  g1 = jax.jit(jax.grad(loss(model)))(params)
  g2 = jax.jit(jax.grad(loss(remat_model)))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_tied_embeddings(tmp_path):
  """3B-style tied lm_head: parity with HF, and save -> load keeps it tied (no lm_head tensor)."""
  hf_dir, hf_model = hf_tiny(tied=True)
  model, params = qwen2_5_vl.load_pretrained(hf_dir)
  assert model.config.text.tie_word_embeddings and "lm_head" not in params
  rng = np.random.default_rng(8)
  grid = [[1, 8, 10]]
  ids = np.array([random_text(rng, 4) + image_block(grid[0]) + random_text(rng, 3)], np.int32)
  pixels = random_pixels(rng, grid)
  ref_logits, _ = hf_forward(hf_model, ids, None, pixels, np.array(grid))
  out = model.apply({"params": params}, jnp.asarray(ids), None, jnp.asarray(pixels), jnp.asarray(grid))
  assert max_rel_err(out.logits, ref_logits) <= TOL
  qwen2_5_vl.save_pretrained(params, model.config, str(tmp_path))
  from roboalign_jax.models.qwen2_5_vl import checkpoint_io
  assert "lm_head.weight" not in checkpoint_io.read_hf_tensors(str(tmp_path))


def test_per_frame_vision_attention_matches_hf(loaded):
  """`frame_patches` (same-size images attended per image, unmasked full-attention blocks) gives
  HF's numbers, including windows cut at the image edge and an image per row of a batch."""
  model, params, hf_model, _ = loaded
  rng = np.random.default_rng(5)
  grid = [[1, 12, 20], [1, 12, 20]]
  row0 = random_text(rng, 4) + image_block(grid[0]) + random_text(rng, 5)
  row1 = random_text(rng, 6) + image_block(grid[1]) + random_text(rng, 3)
  ids = np.array([row0, row1], np.int32)
  pixels = random_pixels(rng, grid)
  ref_logits, ref_hidden = hf_forward(hf_model, ids, None, pixels, np.array(grid, np.int32))
  fwd = jax.jit(lambda p, ids, pix, grid: model.apply(
      {"params": p}, ids, pixel_values=pix, image_grid_thw=grid, output_hidden_states=True,
      frame_patches=240))
  out = fwd(params, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(grid))
  assert max_rel_err(out.logits, ref_logits, None) <= TOL
  assert max(max_rel_err(h, r, None) for h, r in zip(out.hidden_states, ref_hidden)) <= TOL


def test_frame_patches_must_match_the_grid(loaded):
  model, params, _, _ = loaded
  rng = np.random.default_rng(6)
  grid = [[1, 8, 8], [1, 8, 12]]
  ids = np.array([image_block(grid[0]) + image_block(grid[1])], np.int32)
  with pytest.raises(ValueError, match=r"frame_patches=64 promises h\*w = 64 for every image"):
    model.apply({"params": params}, jnp.asarray(ids), pixel_values=jnp.asarray(random_pixels(rng, grid)),
                image_grid_thw=jnp.asarray(grid), frame_patches=64)
