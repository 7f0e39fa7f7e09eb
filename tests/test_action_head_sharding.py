"""Every action-head parameter has logical axis names the default rules cover, and a forward
(sampling and the training loss) sharded over a 2x2x2 (data, fsdp, tensor) mesh of emulated CPU
devices equals the single-device one.

The sharded run is made as a train step makes it: inside the mesh and the logical-axis rules, so
the head's activation constraints apply. (Without them, XLA 0.10.2 on CPU miscomputes this mesh
for a pattern the DiT contains — a batch-sharded matmul chain plus a term from a (fsdp, tensor)
weight — with both partitioners; the constraints avoid that partitioning.)"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import gr00t_reference as ref_lib
from roboalign_jax.models import action_head
from roboalign_jax.parallel.mesh import create_mesh
from roboalign_jax.parallel.sharding import DEFAULT_RULES, batch_sharding, check_rules_cover, logical_shardings


@pytest.fixture(scope="module")
def setup():
  config = action_head.config_from_variant("tiny", backbone_feature_dim=20)
  cfg = config.to_gr00t_dict()
  ref = ref_lib.random_reference(cfg, seed=8)
  head, params = action_head.load_gr00t(ref_lib.write_checkpoint(ref_lib.tmp_dir("gr00t_shard_"), ref, cfg))
  # The reference checkpoint has no projection: add ours (the config asks for one).
  head = action_head.FlowMatchingHead(config)
  rng = np.random.default_rng(0)
  params = dict(params, eagle_linear=dict(kernel=jnp.asarray(rng.normal(size=(20, 32)) * 0.2, jnp.float32),
                                          bias=jnp.asarray(rng.normal(size=(32,)) * 0.2, jnp.float32)))
  b, t = 8, 5
  batch = dict(vl=rng.normal(size=(b, t, 20)).astype(np.float32),
               state=rng.normal(size=(b, 1, config.max_state_dim)).astype(np.float32),
               ids=np.array([0, 1, 2, 0, 1, 2, 2, 0]),
               noise=rng.normal(size=(b, config.action_horizon, config.action_dim)).astype(np.float32),
               actions=rng.uniform(-1, 1, size=(b, config.action_horizon, config.action_dim)).astype(np.float32),
               t=rng.uniform(size=(b,)).astype(np.float32))
  batch["mask"] = (rng.uniform(size=batch["actions"].shape) > 0.2).astype(np.float32)
  return head, params, batch


def _run(head, params, batch):
  actions = action_head.sample(head, params, batch["vl"], batch["state"], batch["ids"], noise=batch["noise"])
  loss, _ = jax.jit(action_head.flow_matching_loss, static_argnums=0, static_argnames=("deterministic",))(
      head, params, batch["vl"], batch["state"], batch["actions"], batch["mask"], batch["ids"], rng=jax.random.key(0),
      deterministic=True, noise=batch["noise"], t=batch["t"])
  return np.asarray(actions), float(loss)


def test_every_parameter_is_named_and_covered(setup):
  head, _, _ = setup
  boxed = action_head.abstract_params(head)
  flat = traverse_util.flatten_dict(boxed)
  unnamed = ["/".join(p) for p, v in flat.items() if not isinstance(v, nn.Partitioned)]
  assert not unnamed, unnamed
  check_rules_cover(boxed, DEFAULT_RULES)
  with pytest.raises(ValueError, match=r"\['embodiment'\] are not in the sharding rules"):
    check_rules_cover(boxed, [r for r in DEFAULT_RULES if r[0] != "embodiment"])


def test_sharded_forward_equals_single_device(setup):
  head, params, batch = setup
  want_actions, want_loss = _run(head, params, batch)
  mesh = create_mesh(dict(data=2, fsdp=2, tensor=2))
  shardings = logical_shardings(action_head.abstract_params(head), mesh, DEFAULT_RULES)
  used = {ax for s in jax.tree.leaves(shardings) for p in s.spec if p for ax in (p if isinstance(p, tuple) else (p,))}
  assert used >= {"fsdp", "tensor"}  # parameters really are split
  sharded = jax.device_put(params, shardings)
  data = {k: jax.device_put(jnp.asarray(v), batch_sharding(mesh)) for k, v in batch.items()}
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    got_actions, got_loss = _run(head, sharded, data)
  np.testing.assert_allclose(got_actions, want_actions, rtol=0, atol=1e-5 * np.abs(want_actions).max())
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
