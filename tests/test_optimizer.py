"""Optimiser construction and the shared gradient-application rule."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from roboalign_jax.train.optimizer import make_optimizer, make_schedule
from roboalign_jax.train.train_state import TrainState, apply_gradients


def _optim(**overrides):
  base = dict(lr=1e-3, schedule="cosine", warmup_ratio=0.03, warmup_steps=0, final_lr_ratio=0.0,
              b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0, accumulate_steps=1,
              frozen=())
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def test_cosine_with_warmup_ratio():
  schedule = make_schedule(_optim(), num_steps=200)  # warmup 6 steps
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(3)), 0.5e-3, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(6)), 1e-3, rtol=1e-6)
  # Halfway through the decay the cosine is at half the peak.
  np.testing.assert_allclose(float(schedule(6 + 97)), 0.5e-3, rtol=1e-2)
  assert float(schedule(200)) < 1e-9


def test_constant_and_unknown_schedule():
  schedule = make_schedule(_optim(schedule="constant", warmup_ratio=0.0), num_steps=10)
  assert [float(schedule(s)) for s in (0, 5, 10)] == [1e-3] * 3
  with pytest.raises(ValueError, match=r"config.optim.schedule='step'; allowed: \['constant', 'cosine', 'linear'\]"):
    make_schedule(_optim(schedule="step"), num_steps=10)


def _params():
  return {"vision": {"kernel": jnp.ones((3, 3))}, "text": {"kernel": jnp.ones((3, 3)),
                                                          "bias": jnp.ones((3,))}}


def test_frozen_parameters_do_not_move():
  params = _params()
  tx, _ = make_optimizer(_optim(frozen=("^vision/",), schedule="constant", warmup_ratio=0.0),
                         10, params)
  state = TrainState.create(params, tx, jax.random.PRNGKey(0))
  grads = jax.tree.map(jnp.ones_like, params)
  state, _ = apply_gradients(state, grads, tx)
  np.testing.assert_array_equal(state.params["vision"]["kernel"], params["vision"]["kernel"])
  assert not np.allclose(state.params["text"]["kernel"], params["text"]["kernel"])


def test_freezing_everything_is_an_error():
  with pytest.raises(ValueError, match="freezes every parameter"):
    make_optimizer(_optim(frozen=(".*",)), 10, _params())


def test_weight_decay_only_on_matrices():
  params = _params()
  tx, _ = make_optimizer(_optim(weight_decay=0.1, schedule="constant", warmup_ratio=0.0), 10)
  state = TrainState.create(params, tx, jax.random.PRNGKey(0))
  state, _ = apply_gradients(state, jax.tree.map(jnp.zeros_like, params), tx)
  np.testing.assert_allclose(state.params["text"]["kernel"], 1 - 1e-3 * 0.1, rtol=1e-6)
  np.testing.assert_array_equal(state.params["text"]["bias"], 1.0)


def test_nonfinite_gradient_update_is_skipped():
  params = _params()
  tx, _ = make_optimizer(_optim(schedule="constant", warmup_ratio=0.0), 10)
  state = TrainState.create(params, tx, jax.random.PRNGKey(0))
  grads = jax.tree.map(jnp.ones_like, params)
  grads["text"]["bias"] = grads["text"]["bias"].at[0].set(jnp.nan)
  new_state, metrics = apply_gradients(state, grads, tx)
  assert float(metrics["update_skipped"]) == 1.0
  assert int(new_state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, new_state.params, params)
  jax.tree.map(np.testing.assert_array_equal, new_state.opt_state, state.opt_state)
  # A finite gradient afterwards updates normally.
  newer, metrics = apply_gradients(new_state, jax.tree.map(jnp.ones_like, params), tx)
  assert float(metrics["update_skipped"]) == 0.0
  assert not np.allclose(newer.params["text"]["kernel"], params["text"]["kernel"])


def test_gradient_accumulation_applies_every_k_steps():
  params = _params()
  tx, _ = make_optimizer(_optim(schedule="constant", warmup_ratio=0.0, accumulate_steps=2), 10)
  state = TrainState.create(params, tx, jax.random.PRNGKey(0))
  grads = jax.tree.map(jnp.ones_like, params)
  once, _ = apply_gradients(state, grads, tx)
  jax.tree.map(np.testing.assert_array_equal, once.params, params)
  twice, _ = apply_gradients(once, grads, tx)
  assert not np.allclose(twice.params["text"]["kernel"], params["text"]["kernel"])
