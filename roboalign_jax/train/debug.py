"""Stage "debug": a tiny language model on a synthetic token-mapping task, trained through the
same machinery as the real stages (mesh, sharded state, Grain data with checkpointed position,
Orbax checkpoints, metrics, preemption). It lets the machinery be tested and demonstrated
without the backbone, and its loss falls to ~0 within a few hundred steps.

Task: each token x in [0, vocab) maps to (multiplier * x + offset) mod vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from roboalign_jax.models.debug_lm import DebugLM
from roboalign_jax.parallel import mesh as mesh_lib
from roboalign_jax.parallel import partitioned
from roboalign_jax.parallel import sharding as sharding_lib
from roboalign_jax.train import evaluators, loop
from roboalign_jax.train.optimizer import make_optimizer
from roboalign_jax.train.train_state import TrainState, apply_gradients



def make_example(index: int, *, seed: int, seq_len: int, vocab_size: int, multiplier: int,
                 offset: int) -> dict[str, np.ndarray]:
  """Example `index` of the synthetic task; a pure function of (seed, index)."""
  tokens = np.random.default_rng([seed, index]).integers(0, vocab_size, seq_len, dtype=np.int32)
  return {"tokens": tokens, "targets": ((multiplier * tokens + offset) % vocab_size).astype(np.int32)}


def make_dataset(data: ml_collections.ConfigDict, *, global_batch_size: int,
                 process_index: int, process_count: int) -> grain.IterDataset:
  """This process's share of every global batch, in a seed-determined shuffled order.

  The global order is the same whatever the number of processes; process p takes rows
  [p·b, (p+1)·b) of each global batch (b = global / processes), which is how
  `jax.make_array_from_process_local_data` assembles them on the batch-sharded mesh.
  """
  if global_batch_size % process_count:
    raise ValueError(f"config.data.global_batch_size={global_batch_size} is not divisible by "
                     f"{process_count} processes")
  local = global_batch_size // process_count
  example = functools.partial(make_example, seed=data.seed, seq_len=data.seq_len,
                              vocab_size=data.vocab_size, multiplier=data.multiplier,
                              offset=data.offset)
  indices = grain.MapDataset.range(data.num_examples).shuffle(seed=data.seed).repeat()
  batches = indices.batch(global_batch_size, drop_remainder=True)
  # Only this process's rows of each global batch are ever built.
  local_rows = batches.map(lambda idx: idx[process_index * local:(process_index + 1) * local])
  examples = local_rows.map(lambda idx: [example(int(i)) for i in idx])
  stacked = examples.map(lambda rows: {k: np.stack([r[k] for r in rows]) for k in rows[0]})
  return stacked.to_iter_dataset()


def eval_batch(data: ml_collections.ConfigDict, *, process_index: int,
               process_count: int) -> dict[str, np.ndarray]:
  """This process's rows of the held-out set: indices past the training range, never trained on."""
  local = data.eval_examples // process_count
  indices = range(data.num_examples + process_index * local, data.num_examples + (process_index + 1) * local)
  rows = [make_example(i, seed=data.seed, seq_len=data.seq_len, vocab_size=data.vocab_size,
                       multiplier=data.multiplier, offset=data.offset) for i in indices]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def loss_fn(params, model: DebugLM, batch, rng, *, deterministic: bool):
  rngs = None if deterministic else {"dropout": rng}
  logits = model.apply({"params": params}, batch["tokens"], deterministic=deterministic, rngs=rngs)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
  accuracy = (logits.argmax(-1) == batch["targets"]).mean()
  return loss, {"loss": loss, "accuracy": accuracy}


def train_step(state: TrainState, batch, *, model: DebugLM, tx, schedule):
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, metrics), grads = grad_fn(state.params, model, batch, state.step_rng(), deterministic=False)
  new_state, update_metrics = apply_gradients(state, grads, tx)
  # A cheap signature of which examples were in the batch, so tests can compare data order.
  weights = jnp.arange(1, batch["tokens"].size + 1, dtype=jnp.float32).reshape(batch["tokens"].shape)
  fingerprint = jnp.sum(batch["tokens"].astype(jnp.float32) * weights)
  return new_state, {**metrics, **update_metrics, "lr": schedule(state.step),
                     "batch_fingerprint": fingerprint}


@dataclasses.dataclass
class DebugSetup:
  config: ml_collections.ConfigDict
  model: DebugLM
  mesh: Any
  state: TrainState
  abstract_state: Any
  shardings: Any
  step: partitioned.ShardedStep
  evaluate: Any  # (params, global batch) -> {loss, accuracy}, deterministic


def build(config: ml_collections.ConfigDict, mesh) -> DebugSetup:
  """Model, sharded initial state and jitted step of the debug stage on `mesh`."""
  rules = sharding_lib.as_rules(config.sharding.rules)
  model = DebugLM(vocab_size=config.data.vocab_size, embed_dim=config.model.embed_dim,
                  mlp_dim=config.model.mlp_dim, num_layers=config.model.num_layers,
                  dropout_rate=config.model.dropout_rate)
  tx, schedule = make_optimizer(config.optim, config.train.num_steps)

  def init_state(rng):
    params = model.init(rng, jnp.zeros((1, config.data.seq_len), jnp.int32))["params"]
    return TrainState.create(params, tx, jax.random.fold_in(rng, 1))

  state, abstract_state, shardings = partitioned.init_sharded(
      init_state, mesh, rules, jax.random.PRNGKey(config.seed))
  step = partitioned.ShardedStep(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule), mesh, rules, shardings)
  eval_jit = jax.jit(lambda params, batch: loss_fn(params, model, batch, None, deterministic=True)[1])

  def evaluate(params, batch):
    with sharding_lib.activation_context(mesh, rules):
      return eval_jit(params, batch)

  return DebugSetup(config, model, mesh, state, abstract_state, shardings, step, evaluate)


def make_heldout_evaluator(options: ml_collections.ConfigDict, setup: DebugSetup):
  """`eval/loss`, `eval/accuracy` on `data.eval_examples` held-out sequences."""
  del options
  held_out = sharding_lib.global_batch(
      eval_batch(setup.config.data, process_index=jax.process_index(), process_count=jax.process_count()),
      setup.mesh)

  def evaluate(state, step):
    del step
    return {f"eval/{k}": v for k, v in jax.device_get(setup.evaluate(state.params, held_out)).items()}
  return evaluate


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the debug model; returns the final metrics (also in `<workdir>/metrics.jsonl`)."""
  mesh = mesh_lib.create_mesh(config.mesh.to_dict())
  setup = build(config, mesh)
  data_iter = iter(make_dataset(config.data, global_batch_size=config.data.global_batch_size,
                                process_index=jax.process_index(),
                                process_count=jax.process_count()))
  step = lambda state, batch, _: setup.step(state, sharding_lib.global_batch(batch, mesh))
  return loop.run(config, workdir, mesh, loop.Stage(
      name="debug", state=setup.state, abstract_state=setup.abstract_state, step=step, data_iter=data_iter,
      num_steps=config.train.num_steps, evaluators=evaluators.build(config, setup)))
