"""Sharded forward on 8 emulated CPU devices (FSDP, tensor parallel, and mixed) equals the
unsharded forward, with every parameter placed by the Foundation logical-axis rules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen2_5_vl_reference import hf_tiny, image_block, random_pixels, random_text
from roboalign_jax.models import qwen2_5_vl
from roboalign_jax.parallel.mesh import create_mesh
from roboalign_jax.parallel.sharding import DEFAULT_RULES, batch_sharding

import sharding_helpers


@pytest.fixture(scope="module")
def setup():
  hf_dir, _ = hf_tiny()
  model, params = qwen2_5_vl.load_pretrained(hf_dir)
  rng = np.random.default_rng(21)
  grid = np.array([[1, 8, 12], [1, 6, 10]], np.int32)
  rows = [random_text(rng, 4) + image_block(grid[0]) + random_text(rng, 3),
          random_text(rng, 2) + image_block(grid[1]) + random_text(rng, 1)]
  t = max(map(len, rows))
  ids = np.zeros((8, t), np.int32)  # batch 8 so it splits over data x fsdp
  mask = np.zeros((8, t), np.int32)
  for b in range(8):
    row = rows[0] if b == 0 else (rows[1] if b == 1 else random_text(rng, t - b))
    ids[b, t - len(row):] = row
    mask[b, t - len(row):] = 1
  inputs = (ids, mask, random_pixels(rng, grid), grid)
  ref = model.apply({"params": params}, *map(jnp.asarray, inputs), output_hidden_states=True)
  return model, params, inputs, ref


@pytest.mark.parametrize("mesh_shape", [dict(data=1, fsdp=8, tensor=1), dict(data=1, fsdp=1, tensor=8),
                                        dict(data=2, fsdp=2, tensor=2)], ids=["fsdp", "tensor", "mixed"])
def test_sharded_forward_equals_unsharded(setup, mesh_shape):
  model, params, (ids, mask, pixels, grid), ref = setup
  mesh = create_mesh(mesh_shape)
  sharded = sharding_helpers.shard_params(qwen2_5_vl.abstract_params(model), params, mesh)
  # At least one parameter is actually split, per mesh axis in use.
  used = sharding_helpers.mesh_axes_used(jax.tree.map(lambda x: x.sharding, sharded))
  assert used >= {a for a, n in mesh_shape.items() if n > 1 and a != "data"}
  data = jax.device_put((jnp.asarray(ids), jnp.asarray(mask)), batch_sharding(mesh))

  @jax.jit
  def fwd(p, ids, mask, pixels, grid):
    return model.apply({"params": p}, ids, mask, pixels, grid, output_hidden_states=True)

  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    out = fwd(sharded, *data, jnp.asarray(pixels), jnp.asarray(grid))
  real = mask.astype(bool)
  for got, want in zip((out.logits, *out.hidden_states), (ref.logits, *ref.hidden_states)):
    got, want = np.asarray(got)[real], np.asarray(want)[real]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
