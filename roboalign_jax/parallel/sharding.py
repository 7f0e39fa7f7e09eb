"""Logical-axis sharding: parameters and activations name their axes (`embed`, `mlp`, ...),
a rules table maps those names to mesh axes, and these helpers turn annotated pytrees into
`NamedSharding`s and host-local batches into global arrays.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalRules = Sequence[tuple[str, Any]]

# Logical axis names used across the code base, and where they go by default.
# Parameters: embed (model width), mlp (FFN hidden), heads / kv_heads (attention heads),
# head_dim, vocab, norm (scales), patch (vision patch input), conv (small kernels).
# Activations: batch, length, plus the parameter names above for their last dims.
# A mesh axis is used at most once per array: flax skips a rule whose mesh axis is already
# taken, so an activation `(batch, length, embed)` shards batch over (data, fsdp) and leaves
# embed whole, while the parameter `(embed, mlp)` shards embed over fsdp (FSDP/ZeRO-3).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", None),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("norm", None),
    ("patch", None),
    ("conv", None),
    ("embodiment", None),  # per-embodiment weight slots of the action head (gathered by id)
    ("io", None),          # narrow robot-side widths: state, action, timestep features
)


def as_rules(rules: Iterable[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
  """Normalises a rules table from a config (lists from JSON/flags) into tuples."""
  out = []
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"sharding rule {rule!r}: expected (logical_name, mesh_axis | tuple | None)")
    name, target = rule
    out.append((name, tuple(target) if isinstance(target, (list, tuple)) else target))
  return tuple(out)


def _logical_names(tree: Any) -> set[str]:
  names: set[str] = set()
  for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    if isinstance(leaf, nn.Partitioned):
      names.update(name for name in leaf.names if name is not None)
  return names


def check_rules_cover(tree: Any, rules: LogicalRules) -> None:
  """Raises if `tree` (boxed with `nn.Partitioned`) uses a logical name the rules do not map.

  Flax would silently replicate such an axis; a typo in a module should fail instead.
  """
  known = {name for name, _ in rules}
  missing = _logical_names(tree) - known
  if missing:
    raise ValueError(
        f"logical axis names {sorted(missing)} are not in the sharding rules; known: {sorted(known)}")


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """NamedShardings for a (possibly abstract) pytree whose leaves are `nn.Partitioned` boxes.

  Unboxed leaves (step counters, RNG keys) are replicated.
  """
  rules = as_rules(rules)
  check_rules_cover(boxed_tree, rules)
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every data-parallel axis, the rest replicated.

  One sharding serves arrays of any rank ≥ 1 (a spec shorter than the rank replicates the rest).
  """
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's slice of the batch into global arrays sharded over the batch axes.

  Every leaf's leading dimension is this process's share: global size / `jax.process_count()`.
  """
  sharding = batch_sharding(mesh)
  ways = data_parallel_size(mesh)

  def to_global(x):
    x = np.asarray(x)
    if x.ndim == 0 or (x.shape[0] * jax.process_count()) % ways:
      raise ValueError(
          f"batch leaf of shape {x.shape} (per process) cannot be split over the mesh's "
          f"data x fsdp = {ways} ways; the global batch size must be a multiple of {ways}")
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(to_global, local_batch)


def host_array(x: Any) -> np.ndarray:
  """A (possibly multi-process) global array -> the whole array on this host."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def host_tree(tree: Any) -> Any:
  """`host_array` of every leaf (e.g. parameters before an export)."""
  return jax.tree.map(host_array, tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def activation_context(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
  """Makes `nn.with_logical_constraint` inside traced code resolve against `mesh` and `rules`.

  Flax only applies activation constraints when a global mesh is set (`jax.sharding.set_mesh`);
  the legacy `with mesh:` context is silently ignored by it.
  """
  with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(as_rules(rules)):
    yield
