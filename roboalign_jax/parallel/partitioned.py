"""Building sharded train states and jitted steps with explicit shardings.

The state is never materialised unsharded: its logical partitioning is read from an abstract
(`jax.eval_shape`) initialisation, and the real initialisation is jitted with those shardings
as `out_shardings`, so each device only ever allocates its own shard.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
from jax.sharding import Mesh

from roboalign_jax.parallel import sharding as sharding_lib


def state_shardings(boxed_init: Callable[..., Any], mesh: Mesh, rules, *args) -> tuple[Any, Any]:
  """(abstract unboxed state with shardings attached, NamedSharding tree) for `boxed_init(*args)`."""
  abstract_boxed = jax.eval_shape(boxed_init, *args)
  shardings = sharding_lib.logical_shardings(abstract_boxed, mesh, rules)
  abstract = jax.tree.map(
      lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
      nn.unbox(abstract_boxed), shardings)
  return abstract, shardings


def init_sharded(boxed_init: Callable[..., Any], mesh: Mesh, rules, *args) -> tuple[Any, Any, Any]:
  """Runs `boxed_init(*args)` (returns a pytree with `nn.Partitioned` leaves) directly into
  sharded device memory. Returns (unboxed state, its abstract twin with shardings, shardings);
  the abstract twin is the restore target for checkpoints."""
  abstract, shardings = state_shardings(boxed_init, mesh, rules, *args)
  with sharding_lib.activation_context(mesh, rules):
    state = jax.jit(lambda *a: nn.unbox(boxed_init(*a)), out_shardings=shardings)(*args)
  return state, abstract, shardings


class ShardedStep:
  """A jitted `fn(state, batch, *extra) -> (state, metrics)` with explicit shardings.

  The state is donated (its buffers are reused for the new state), the batch is split over the
  data-parallel axes, metrics come back replicated. Extra arguments are replicated, or placed by
  `extra_shardings` (e.g. a frozen backbone's parameters, sharded like a train state). Tracing
  happens inside the activation context so the modules' `nn.with_logical_constraint`
  annotations take effect.
  """

  def __init__(self, fn: Callable[..., Any], mesh: Mesh, rules, state_shardings: Any,
               *, num_extra_args: int = 0, donate_state: bool = True, extra_shardings: tuple | None = None):
    self.mesh, self.rules = mesh, rules
    batch = sharding_lib.batch_sharding(mesh)
    replicated = sharding_lib.replicated(mesh)
    if extra_shardings is None:
      extra_shardings = (replicated,) * num_extra_args
    self._jitted = jax.jit(
        fn,
        in_shardings=(state_shardings, batch) + tuple(extra_shardings),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,) if donate_state else ())

  def __call__(self, state, batch, *extra):
    with sharding_lib.activation_context(self.mesh, self.rules):
      return self._jitted(state, batch, *extra)
