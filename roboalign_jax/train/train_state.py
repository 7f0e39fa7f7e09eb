"""The train state every trainer carries, and the one gradient-application rule they share."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data iterator.

  step: int32 [] optimiser steps taken. params / opt_state: pytrees (sharded by logical axes).
  rng: uint32 [2] raw PRNG key; each step derives its keys with `fold_in(rng, step)`, so a resumed
  run draws exactly the numbers an uninterrupted one would.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)

  def step_rng(self) -> jax.Array:
    return jax.random.fold_in(self.rng, self.step)


def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation,
                    *, skip_nonfinite: bool = True) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser update. Returns the new state and `{grad_norm, update_skipped}`.

  With `skip_nonfinite`, an update whose gradient norm is NaN/inf leaves params and optimiser
  state untouched (the step counter still advances, so data and RNG move on); the caller logs
  and counts `update_skipped`.
  """
  grad_norm = optax.tree.norm(grads)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  skipped = jnp.logical_not(jnp.isfinite(grad_norm)) if skip_nonfinite else jnp.zeros((), bool)
  keep_old = lambda new, old: jax.tree.map(lambda n, o: jnp.where(skipped, o, n), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep_old(new_params, state.params),
      opt_state=keep_old(new_opt_state, state.opt_state))
  return new_state, {"grad_norm": grad_norm, "update_skipped": skipped.astype(jnp.float32)}
