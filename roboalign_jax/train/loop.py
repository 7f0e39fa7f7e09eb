"""The training loop every stage shares: auto-resume, steps, logging, checkpoints, preemption.

A trainer builds its state, sharded step and data iterator, then hands them to `run`. The loop
owns everything that must behave the same in all stages: resuming from the latest checkpoint in
the workdir (train state and data position), writing metrics, periodic async checkpoints, a
final checkpoint, and a clean exit with a checkpoint on SIGTERM/SIGINT.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Iterator, Mapping

import jax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from roboalign_jax.parallel import sharding as sharding_lib
from roboalign_jax.train.checkpoint import Checkpointer
from roboalign_jax.train.metrics import MetricWriter
from roboalign_jax.train.preemption import PreemptionGuard

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoopResult:
  state: Any
  step: int
  resumed_from: int | None
  preempted: bool
  last_metrics: dict[str, float]


def run(*, state: Any, abstract_state: Any, step_fn: Callable[[Any, Any], tuple[Any, Mapping]],
        data_iter: Iterator, mesh: Mesh, num_steps: int, checkpointer: Checkpointer,
        writer: MetricWriter, metadata: dict[str, Any], log_every: int = 10,
        eval_fn: Callable[[Any, int], Mapping[str, float]] | None = None, eval_every: int = 0,
        desc: str = "train") -> LoopResult:
  """Trains `state` up to `num_steps` optimiser steps.

  Args:
    state: freshly initialised (sharded) state; replaced by the checkpoint when one exists.
    abstract_state: ShapeDtypeStructs with shardings, the restore target.
    step_fn: `(state, global_batch) -> (state, metrics)`, e.g. a `ShardedStep`.
    data_iter: a Grain iterator of this process's local batches (its position is checkpointed).
    metadata: JSON-serialisable run description saved with every checkpoint.
    eval_fn: `(state, step) -> scalars`, called every `eval_every` steps (0: never) and after
      the last step.
  """
  resumed_from = checkpointer.latest_step()
  if resumed_from is not None:
    state, _ = checkpointer.restore(resumed_from, abstract_state, data_iter=data_iter)
    log.info("resumed from checkpoint at step %d", resumed_from)
    writer.write(resumed_from, {}, event="resumed")
  step = int(jax.device_get(state.step))
  last: dict[str, float] = {}
  preempted = False
  progress = tqdm(total=num_steps, initial=step, desc=desc, disable=jax.process_index() != 0,
                  dynamic_ncols=True, mininterval=1.0)
  with PreemptionGuard() as guard:
    while step < num_steps:
      if guard.should_stop():
        preempted = True
        break
      started = time.perf_counter()
      batch = sharding_lib.global_batch(next(data_iter), mesh)
      state, metrics = step_fn(state, batch)
      step += 1
      if step % log_every == 0 or step == num_steps:
        last = {k: float(v) for k, v in jax.device_get(metrics).items()}
        last["step_seconds"] = time.perf_counter() - started
        writer.write(step, last)
        progress.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k in ("loss", "accuracy")})
      if eval_fn is not None and ((eval_every and step % eval_every == 0) or step == num_steps):
        writer.write(step, dict(eval_fn(state, step)))
      checkpointer.save(step, state, data_iter=data_iter, metadata=metadata)
      progress.update(1)
  progress.close()
  checkpointer.save(step, state, data_iter=data_iter, metadata=metadata, force=True)
  checkpointer.wait()
  if preempted:
    log.warning("stopped by %s at step %d; checkpoint saved", guard.signal_name, step)
    writer.write(step, {}, event="preempted", signal=guard.signal_name)
  return LoopResult(state=state, step=step, resumed_from=resumed_from, preempted=preempted,
                    last_metrics=last)
