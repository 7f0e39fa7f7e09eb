"""A train step sharded over an emulated 8-device mesh equals the single-device step, and the
parameter / optimiser-state shardings follow the logical-axis rules table."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from roboalign_jax.parallel import mesh as mesh_lib
from roboalign_jax.parallel import sharding as sharding_lib
from roboalign_jax.train import debug
import sharding_helpers
from configs_loader import load_config

NUM_STEPS = 3


def _run(config, sizes):
  data = iter(debug.make_dataset(config.data, global_batch_size=config.data.global_batch_size,
                                 process_index=0, process_count=1))
  batches = [next(data) for _ in range(NUM_STEPS)]
  return sharding_helpers.run_steps(lambda mesh: debug.build(config, mesh), batches, sizes)


@pytest.fixture(scope="module")
def config():
  return load_config("configs/debug.py:tiny")


@pytest.fixture(scope="module")
def single_device(config):
  run = _run(config, sharding_helpers.SINGLE)
  return run.params, run.history


@pytest.mark.parametrize("sizes,expected_up_shard", [
    ({"data": 2, "fsdp": 4, "tensor": 1}, (8, 128)),
    ({"data": 2, "fsdp": 1, "tensor": 4}, (32, 32)),
])
def test_sharded_step_equals_single_device(config, single_device, sizes, expected_up_shard):
  run = _run(config, sizes)
  setup, params, history = run.setup, run.params, run.history
  ref_params, ref_history = single_device
  for got, want in zip(history, ref_history):
    for key in ("loss", "accuracy", "grad_norm"):
      np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), params, ref_params)

  # Shardings follow DEFAULT_RULES: embed -> fsdp, mlp/vocab -> tensor, norms replicated.
  params = setup.shardings.params
  assert params["up_0"]["kernel"].spec == P("fsdp", "tensor")
  assert params["down_0"]["kernel"].spec == P("tensor", "fsdp")
  assert params["Embed_0"]["embedding"].spec == P("tensor", "fsdp")
  assert params["head"]["kernel"].spec == P("fsdp", "tensor")
  assert params["norm_0"]["scale"].spec == P(None)
  assert setup.shardings.step.spec == P()
  # Adam moments are sharded exactly like their parameters.
  adam = setup.shardings.opt_state[1][0]
  assert adam.mu["up_0"]["kernel"].spec == P("fsdp", "tensor")
  assert adam.nu["head"]["kernel"].spec == P("fsdp", "tensor")
  # And the arrays really are split that way on the devices.
  up = run.state.params["up_0"]["kernel"]
  assert up.addressable_shards[0].data.shape == expected_up_shard
  assert len({s.device for s in up.addressable_shards}) == 8


def test_unknown_logical_axis_is_an_error():
  import flax.linen as nn
  import jax.numpy as jnp
  boxed = {"w": nn.Partitioned(jnp.zeros((4, 4)), names=("embed", "mlpp"))}
  mesh = mesh_lib.create_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  with pytest.raises(ValueError, match="'mlpp'"):
    sharding_lib.logical_shardings(boxed, mesh, sharding_lib.DEFAULT_RULES)


@pytest.mark.parametrize("sizes,count,expected", [
    ({"data": -1, "fsdp": 1, "tensor": 1}, 8, (8, 1, 1)),
    ({"data": 2, "fsdp": -1, "tensor": 2}, 8, (2, 2, 2)),
    ({"data": 1, "fsdp": 4, "tensor": 2}, 8, (1, 4, 2)),
])
def test_mesh_shape(sizes, count, expected):
  assert mesh_lib.resolve_mesh_shape(sizes, count) == expected


@pytest.mark.parametrize("sizes,message", [
    ({"data": -1, "fsdp": 3, "tensor": 1}, "not divisible"),
    ({"data": -1, "fsdp": -1, "tensor": 1}, "at most one axis"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, "needs 4 devices"),
    ({"data": -1, "pipeline": 2}, "unknown mesh axes"),
])
def test_bad_mesh_config(sizes, message):
  with pytest.raises(ValueError, match=message):
    mesh_lib.resolve_mesh_shape(sizes, 8)
