"""Sharded-vs-single-device checks: the same steps on a one-device mesh and on a mesh of the 8
emulated CPU devices (tests/conftest.py), and parameters placed by the logical-axis rules."""

import dataclasses
from typing import Any

import jax

from roboalign_jax.parallel import mesh as mesh_lib
from roboalign_jax.parallel import sharding as sharding_lib

SINGLE = {"data": 1, "fsdp": 1, "tensor": 1}


@dataclasses.dataclass
class Run:
  setup: Any     # what build(mesh) returned
  initial: Any   # parameters before the first step (host)
  params: Any    # parameters after the last step (host)
  history: list  # per-step metrics (host)
  state: Any     # the final state, on the mesh


def run_steps(build, batches, sizes) -> Run:
  """build(mesh) -> setup with .state and .step(state, global batch); runs every batch of
  `batches` (host arrays, or a callable setup -> batches) on a mesh of `sizes` (SINGLE: one
  device; otherwise all 8)."""
  assert jax.device_count() == 8, "tests/conftest.py should emulate 8 CPU devices"
  devices = jax.devices()[:1] if sizes == SINGLE else jax.devices()
  mesh = mesh_lib.create_mesh(sizes, devices=devices)
  setup = build(mesh)
  state, history = setup.state, []
  initial = jax.device_get(state.params)
  for batch in (batches(setup) if callable(batches) else batches):
    state, metrics = setup.step(state, sharding_lib.global_batch(batch, mesh))
    history.append(jax.device_get(metrics))
  return Run(setup, initial, jax.device_get(state.params), history, state)


def shard_params(boxed_abstract, params, mesh, rules=sharding_lib.DEFAULT_RULES):
  """`params` placed on `mesh` as the logical axis names of `boxed_abstract` say."""
  return jax.device_put(params, sharding_lib.logical_shardings(boxed_abstract, mesh, rules))


def mesh_axes_used(shardings) -> set[str]:
  """Mesh axes that split at least one array of a sharding tree."""
  return {axis for s in jax.tree.leaves(shardings) for part in s.spec if part
          for axis in (part if isinstance(part, tuple) else (part,))}
