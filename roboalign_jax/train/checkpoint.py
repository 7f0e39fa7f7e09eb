"""Orbax checkpoints of a training run: train state + data-iterator state + JSON metadata.

Layout under `<workdir>/checkpoints/<step>/`:
  state/      the TrainState (sharded arrays; restored straight into the mesh's shardings)
  data_iter/  one JSON per process with its Grain iterator state, so data order resumes exactly
  metadata/   resolved config, dataset statistics, package version and git commit

Saving is asynchronous: `save` returns once device arrays are copied to host, while files are
written in the background; `wait` blocks until the last save is durable (call before exit).
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import grain
import orbax.checkpoint as ocp

import roboalign_jax

STATE, DATA_ITER, METADATA = "state", "data_iter", "metadata"


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

  def restore(self, step: int, abstract_state: Any, *, data_iter: Any = None) -> tuple[Any, dict]:
    """Restores the state into the shardings attached to `abstract_state` (a ShapeDtypeStruct
    tree), sets `data_iter`'s position in place, and returns (state, metadata)."""
    items = {STATE: ocp.args.StandardRestore(abstract_state), METADATA: ocp.args.JsonRestore()}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE], restored[METADATA] or {}

  def read_metadata(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(
        **{METADATA: ocp.args.JsonRestore()}))[METADATA]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

