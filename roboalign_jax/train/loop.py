"""The training loop every stage runs through: resume, steps, metrics, evaluators, checkpoints,
preemption and export exist here once.

A trainer builds its state, step function, data iterator and evaluators on a mesh and hands them
to `run` as a `Stage`:

    summary = loop.run(config, workdir, mesh, Stage(name="sft", state=..., abstract_state=...,
                                                    step=step_fn, data_iter=it, num_steps=n,
                                                    evaluators=evaluators.build(config, setup),
                                                    export=export_fn))

`run` resumes from the newest readable checkpoint in the workdir (train state and data position;
an unreadable one is reported and skipped, see `checkpoint.restore_latest`), takes steps until
`num_steps`, logs every `config.train.log_every` steps, runs each evaluator every `every` steps
and after the last step (and at step 0 before training, when declared `before_train` and the
run starts from scratch), checkpoints on `config.checkpoint.every_steps` and at the end, stops
cleanly with a checkpoint on SIGTERM/SIGINT, and exports at the end of an uninterrupted run (or
exports the latest checkpoint and stops when `config.export.only`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import ml_collections
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm.auto import tqdm

from roboalign_jax.train.checkpoint import Checkpointer, code_version
from roboalign_jax.train.evaluators import Evaluator
from roboalign_jax.train.metrics import MetricWriter
from roboalign_jax.train.preemption import PreemptionGuard

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Stage:
  """What a trainer hands the loop.

  step: `(state, local batch, step) -> (state, metrics)`; `local batch` is the data iterator's
    item (this process's rows), `step` the 1-based number of the step being taken; metrics may
    be device arrays (fetched only on logging steps) or host numbers.
  metadata: stage entries of the checkpoint metadata (e.g. dataset_statistics); the loop adds
    the resolved config, code version and mesh.
  export: `(final state) -> summary entries` (e.g. {"hf_dir": path}); runs on every process at the
    end of an uninterrupted run, which then waits for all processes.
  progress_keys: metrics shown on the progress bar.
  check_metadata: called with the metadata of the checkpoint a run resumes from; raises when
    that checkpoint cannot continue this run (e.g. Stage 3 trained on another backbone).
  """
  name: str
  state: Any
  abstract_state: Any
  step: Callable[[Any, Any, int], tuple[Any, Mapping[str, Any]]]
  data_iter: Iterator
  num_steps: int
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
  evaluators: Sequence[Evaluator] = ()
  export: Callable[[Any], dict[str, Any]] | None = None
  progress_keys: tuple[str, ...] = ("loss", "accuracy")
  check_metadata: Callable[[dict], None] | None = None


def make_checkpointer(config: ml_collections.ConfigDict, workdir: str) -> Checkpointer:
  c = config.checkpoint
  return Checkpointer(f"{workdir}/checkpoints", every_steps=c.every_steps, max_to_keep=c.max_to_keep,
                      async_save=c.async_save)


def run_metadata(config: ml_collections.ConfigDict, mesh: Mesh, stage_metadata: Mapping[str, Any]) -> dict:
  """JSON description saved with every checkpoint."""
  return {"config": json.loads(config.to_json_best_effort()), "dataset_statistics": None, "code": code_version(),
          "mesh": dict(mesh.shape), **stage_metadata}


def _scalar(value: Any) -> Any:
  return value if isinstance(value, (int, float)) and not isinstance(value, bool) else float(value)


def run(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh, stage: Stage) -> dict[str, Any]:
  """Trains `stage` up to `stage.num_steps` steps; returns {"step", "preempted", last logged
  metrics, export entries}."""
  checkpointer = make_checkpointer(config, workdir)
  fallback = bool(config.checkpoint.get("fallback", True))
  try:
    if config.get("export") is not None and config.export.get("only"):
      return _export_only(checkpointer, stage, fallback, workdir)
    writer = MetricWriter(workdir)
    try:
      return _train(config, mesh, stage, checkpointer, writer, fallback)
    finally:
      writer.close()
  finally:
    checkpointer.close()


def _export_only(checkpointer: Checkpointer, stage: Stage, fallback: bool, workdir: str) -> dict[str, Any]:
  if stage.export is None:
    raise ValueError(f"config.export.only: the {stage.name} stage has nothing to export")
  restored = checkpointer.restore_latest(stage.abstract_state, fallback=fallback)
  if restored is None:
    raise FileNotFoundError(f"config.export.only: no checkpoint under {workdir}/checkpoints to export")
  step, state, _ = restored
  return {"step": step, **_export(stage, state)}


def _export(stage: Stage, state: Any) -> dict[str, Any]:
  out = stage.export(state)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"{stage.name}_export")  # files complete before anyone reads them
  return out


def _train(config, mesh, stage: Stage, checkpointer: Checkpointer, writer: MetricWriter,
           fallback: bool) -> dict[str, Any]:
  metadata = run_metadata(config, mesh, stage.metadata)
  log_every = int(config.train.log_every)
  state, data_iter, num_steps = stage.state, stage.data_iter, stage.num_steps
  restored = checkpointer.restore_latest(stage.abstract_state, data_iter=data_iter, fallback=fallback)
  step, resumed_from = 0, None
  if restored is not None:
    resumed_from, state, restored_metadata = restored
    if stage.check_metadata is not None:
      stage.check_metadata(restored_metadata)
    step = resumed_from
    log.info("resumed from checkpoint at step %d", resumed_from)
    writer.write(resumed_from, {}, event="resumed")
  if restored is None:  # EasyR1's val_before_train: the starting params' values, at step 0
    for evaluator in stage.evaluators:
      if evaluator.before_train:
        writer.write(0, dict(evaluator(state, 0)))
  last: dict[str, Any] = {}
  preempted = False
  progress = tqdm(total=num_steps, initial=step, desc=stage.name, disable=jax.process_index() != 0,
                  dynamic_ncols=True, mininterval=1.0)
  with PreemptionGuard() as guard:
    while step < num_steps:
      if guard.should_stop():
        preempted = True
        break
      started = time.perf_counter()
      step += 1
      state, metrics = stage.step(state, next(data_iter), step)
      if step % log_every == 0 or step == num_steps:
        last = {k: _scalar(v) for k, v in jax.device_get(dict(metrics)).items()}
        last.setdefault("step_seconds", time.perf_counter() - started)
        writer.write(step, last)
        progress.set_postfix({k: f"{last[k]:.4g}" for k in stage.progress_keys if k in last})
      for evaluator in stage.evaluators:
        if evaluator.due(step, num_steps):
          writer.write(step, dict(evaluator(state, step)))
      checkpointer.save(step, state, data_iter=data_iter, metadata=metadata)
      progress.update(1)
  progress.close()
  checkpointer.save(step, state, data_iter=data_iter, metadata=metadata, force=True)
  checkpointer.wait()
  if preempted:
    log.warning("stopped by %s at step %d; checkpoint saved", guard.signal_name, step)
    writer.write(step, {}, event="preempted", signal=guard.signal_name)
  summary = {"step": step, "preempted": preempted, "resumed_from": resumed_from, **last}
  if stage.export is not None and not preempted:
    summary.update(_export(stage, state))
  return summary
