"""Orbax checkpoints of a training run: train state + data-iterator state + JSON metadata.

Layout under `<workdir>/checkpoints/<step>/`:
  state/      the TrainState (sharded arrays; restored straight into the mesh's shardings)
  data_iter/  one JSON per process with its Grain iterator state, so data order resumes exactly
  metadata/   resolved config, dataset statistics, package version and git commit

Saving is asynchronous: `save` returns once device arrays are copied to host, while files are
written in the background; `wait` blocks until the last save is durable (call before exit).

Reading is item by item, so an unreadable checkpoint (a corrupted array file, a metadata JSON
that does not decode, a step directory without one of its items) raises `CheckpointError` naming
the step directory and the item. `restore_latest` then, by default, falls back to the newest
readable checkpoint with a warning and moves the unreadable ones aside (to
`<checkpoints>.unreadable/`), so later saves of those steps do not collide with them and
`max_to_keep` never counts them; with `fallback=False` it raises instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

import roboalign_jax

log = logging.getLogger(__name__)

STATE, DATA_ITER, METADATA = "state", "data_iter", "metadata"


class CheckpointError(RuntimeError):
  """A checkpoint that exists but cannot be read: names the step directory and the item."""

  def __init__(self, message: str, *, step: int, item: str):
    super().__init__(message)
    self.step, self.item = step, item


def code_version() -> dict[str, str]:
  """Package version and git commit of the running code (commit "unknown" outside a checkout)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(roboalign_jax.__file__)))
  try:
    commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = "unknown"
  return {"version": roboalign_jax.__version__, "commit": commit}


class Checkpointer:
  """Periodic, keep-N, async checkpointing with auto-resume for one workdir."""

  def __init__(self, directory: str, *, every_steps: int, max_to_keep: int = 3,
               async_save: bool = True):
    if every_steps <= 0:
      raise ValueError(f"config.checkpoint.every_steps={every_steps}; expected a positive integer")
    self.every_steps = every_steps
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save),
        item_handlers={
            STATE: ocp.StandardCheckpointHandler(),
            DATA_ITER: grain.checkpoint.CheckpointHandler(),
            METADATA: ocp.JsonCheckpointHandler(),
        })

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def save(self, step: int, state: Any, *, data_iter: Any = None,
           metadata: dict[str, Any] | None = None, force: bool = False) -> bool:
    """Saves if `step` is on the interval (or `force`) and not already saved. Returns whether it did."""
    if not (force or self.should_save(step)) or step in self.manager.all_steps():
      return False
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    if metadata is not None:
      items[METADATA] = ocp.args.JsonSave(metadata)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def step_directory(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _restore_item(self, step: int, item: str, args: Any) -> Any:
    """One item of checkpoint `step`; CheckpointError naming it when missing or unreadable."""
    where = os.path.join(self.step_directory(step), item)
    if not os.path.isdir(where):
      raise CheckpointError(f"checkpoint {self.step_directory(step)} has no item {item!r} (expected the "
                            f"directory {where}); the save was incomplete or the files were removed",
                            step=step, item=item)
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
    except Exception as error:  # tensorstore DATA_LOSS, UnicodeDecodeError, JSON errors, ...
      raise CheckpointError(f"checkpoint {self.step_directory(step)}: item {item!r} is unreadable "
                            f"({type(error).__name__}: {_first_line(error)})", step=step, item=item) from error

  def restore(self, step: int, abstract_state: Any, *, data_iter: Any = None) -> tuple[Any, dict]:
    """Restores the state into the shardings attached to `abstract_state` (a ShapeDtypeStruct
    tree), sets `data_iter`'s position in place, and returns (state, metadata)."""
    metadata = self._restore_item(step, METADATA, ocp.args.JsonRestore())
    state = self._restore_item(step, STATE, ocp.args.StandardRestore(abstract_state))
    if data_iter is not None:
      self._restore_item(step, DATA_ITER, grain.checkpoint.CheckpointRestore(data_iter))
    return state, metadata or {}

  def restore_latest(self, abstract_state: Any, *, data_iter: Any = None,
                     fallback: bool = True) -> tuple[int, Any, dict] | None:
    """(step, state, metadata) of the newest readable checkpoint, None when there is none.

    An unreadable checkpoint raises CheckpointError unless `fallback`, which warns, moves it aside
    and tries the next older one. Every process takes the same decision (a checkpoint is readable
    only if it is readable on all of them: each holds its own data-iterator file).
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      error = None
      try:
        state, metadata = self.restore(step, abstract_state, data_iter=data_iter)
      except CheckpointError as e:
        error = e
      if not _any_process(error is not None):
        return step, state, metadata
      if error is None:
        error = CheckpointError(f"checkpoint {self.step_directory(step)} is unreadable on another process",
                                step=step, item="?")
      if not fallback:
        raise error
      log.warning("%s; falling back to the previous checkpoint (config.checkpoint.fallback=False refuses)", error)
      self._set_aside(step)
    return None

  def _set_aside(self, step: int) -> None:
    """Moves an unreadable step directory out of the manager's sight (process 0), on every process."""
    _sync("checkpoint_set_aside_before")
    if jax.process_index() == 0:
      target_root = self.directory + ".unreadable"
      os.makedirs(target_root, exist_ok=True)
      target, n = os.path.join(target_root, str(step)), 1
      while os.path.exists(target):
        target, n = os.path.join(target_root, f"{step}.{n}"), n + 1
      shutil.move(self.step_directory(step), target)
      log.warning("moved the unreadable checkpoint %s to %s", self.step_directory(step), target)
    _sync("checkpoint_set_aside_after")
    self.manager.reload()

  def read_metadata(self, step: int) -> dict[str, Any]:
    return self._restore_item(step, METADATA, ocp.args.JsonRestore())

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()



def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else "no message"


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
