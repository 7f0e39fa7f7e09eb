"""Qwen3-VL under the Foundation logical-axis rules: every parameter names its axes, and the
sharded forward on 8 emulated CPU devices (FSDP, tensor parallel, mixed) equals the unsharded one,
logits and every hidden state; the action-token vocabulary resize applies to Qwen3-VL params."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen3_vl_reference import image_block, left_pad, loaded_tiny, random_pixels, random_text
from roboalign_jax.models import qwen3_vl
from roboalign_jax.models.qwen2_5_vl.vocab_extension import resize_vocabulary
from roboalign_jax.parallel.mesh import create_mesh
from roboalign_jax.parallel.sharding import DEFAULT_RULES, batch_sharding

import sharding_helpers


@pytest.fixture(scope="module")
def setup():
  model, params, _ = loaded_tiny()
  rng = np.random.default_rng(21)
  grid = np.array([[1, 8, 12], [1, 6, 10]], np.int32)
  rows = [random_text(rng, 4) + image_block(grid[0]) + random_text(rng, 3),
          random_text(rng, 2) + image_block(grid[1]) + random_text(rng, 1)]
  t = max(map(len, rows))
  rows += [random_text(rng, t - b) for b in range(2, 8)]  # batch 8 so it splits over data x fsdp
  ids, mask = left_pad(rows)
  inputs = (ids, mask, random_pixels(rng, grid), grid)
  fwd = jax.jit(lambda p, ids, mask, pix, grid: model.apply({"params": p}, ids, mask, pix, grid,
                                                             output_hidden_states=True))
  return model, params, inputs, fwd, fwd(params, *map(jnp.asarray, inputs))


def test_every_parameter_has_logical_axes(setup):
  model = setup[0]
  boxed = jax.tree.leaves(qwen3_vl.abstract_params(model), is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert boxed and all(isinstance(x, nn.Partitioned) and len(x.names) == x.value.ndim for x in boxed)


@pytest.mark.parametrize("mesh_shape", [dict(data=1, fsdp=8, tensor=1), dict(data=1, fsdp=1, tensor=8),
                                        dict(data=2, fsdp=2, tensor=2)], ids=["fsdp", "tensor", "mixed"])
def test_sharded_forward_equals_unsharded(setup, mesh_shape):
  model, params, (ids, mask, pixels, grid), fwd, ref = setup
  mesh = create_mesh(mesh_shape)
  sharded = sharding_helpers.shard_params(qwen3_vl.abstract_params(model), params, mesh)
  # At least one parameter is actually split, per mesh axis in use.
  used = sharding_helpers.mesh_axes_used(jax.tree.map(lambda x: x.sharding, sharded))
  assert used >= {a for a, n in mesh_shape.items() if n > 1 and a != "data"}
  data = jax.device_put((jnp.asarray(ids), jnp.asarray(mask)), batch_sharding(mesh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    out = fwd(sharded, *data, jnp.asarray(pixels), jnp.asarray(grid))
  real = mask.astype(bool)
  for got, want in zip((out.logits, *out.hidden_states), (ref.logits, *ref.hidden_states)):
    got, want = np.asarray(got)[real], np.asarray(want)[real]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_vocabulary_resize_applies(setup):
  """`qwen2_5_vl.vocab_extension.resize_vocabulary` grows Qwen3-VL's embedding and untied head to
  the shapes of the resized model, keeping the old rows."""
  model, params, *_ = setup
  old = model.config.text.vocab_size
  grown, config = resize_vocabulary(params, model.config, old + 128, range(old, old + 5), mean_over=old)
  assert config.text.vocab_size == old + 128 and isinstance(config, qwen3_vl.Qwen3VLConfig)
  expected = jax.tree.map(lambda x: x.shape, nn.unbox(qwen3_vl.abstract_params(qwen3_vl.Qwen3VL(config))))
  assert jax.tree.map(lambda x: x.shape, grown) == expected
  emb, head = grown["language_model"]["embed_tokens"]["embedding"], grown["lm_head"]["kernel"]
  np.testing.assert_array_equal(emb[:old], params["language_model"]["embed_tokens"]["embedding"])
  np.testing.assert_array_equal(head[:, :old], params["lm_head"]["kernel"])
  np.testing.assert_allclose(emb[old + 2], np.asarray(emb[:old]).mean(0), rtol=1e-5, atol=1e-7)
