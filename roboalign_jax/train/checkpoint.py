"""Orbax checkpoints of a training run: train state + data-iterator state + JSON metadata.

Layout under `<workdir>/checkpoints/<step>/`:
  state/      the TrainState (sharded arrays; restored straight into the mesh's shardings)
  data_iter/  one JSON per process with its Grain iterator state, so data order resumes exactly
  metadata/   resolved config, dataset statistics, package version and git commit

Saving is asynchronous: `save` returns once device arrays are copied to host, while files are
written in the background; `wait` blocks until the last save is durable (call before exit).
A save that fails (disk full, quota, a file size limit, ...) raises `CheckpointSaveError` naming the
step, its directory and the OS error at the next `save` or `wait` -- never silently -- after
removing its half-written files and leaving every earlier checkpoint in place; the training loop
lets it stop the run, and a rerun resumes from the newest complete checkpoint.

Orbax writes each step to `<step>.orbax-checkpoint-tmp/` and renames it only once complete, so a
process killed mid-save leaves a temporary directory that is never read; the first save of the
next run warns about and removes such leftovers. Old checkpoints beyond `max_to_keep` are
deleted only after a newer one is complete, so a failed or killed save never costs the last one.

Reading is item by item, so an unreadable checkpoint (a corrupted array file, a metadata JSON
that does not decode, a step directory without one of its items) raises `CheckpointError` naming
the step directory and the item. `restore_latest` then, by default, falls back to the newest
readable checkpoint with a warning and moves the unreadable ones aside (to
`<checkpoints>.unreadable/`), so later saves of those steps do not collide with them and
`max_to_keep` never counts them; with `fallback=False` it raises instead.
"""

from __future__ import annotations

import errno
import logging
import os
import re
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
TMP_MARKER = ".orbax-checkpoint-tmp"  # Orbax's suffix of a step directory still being written
# errnos meaning "the filesystem has no room for this file"
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class CheckpointError(RuntimeError):
  """A checkpoint that exists but cannot be read: names the step directory and the item."""

  def __init__(self, message: str, *, step: int, item: str):
    super().__init__(message)
    self.step, self.item = step, item


class CheckpointSaveError(RuntimeError):
  """A checkpoint that could not be written: names the step, its directory and the cause."""

  def __init__(self, message: str, *, step: int | None, directory: str):
    super().__init__(message)
    self.step, self.directory = step, directory


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
    self._pending: int | None = None  # step of the save that may still be writing
    self._writing = False  # set by the first save: a Checkpointer that only reads removes nothing
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
    if not (force or self.should_save(step)):
      return False
    self.wait()  # an earlier background save that failed raises here, naming its own step
    if not self._writing:
      # Not at construction: a reader of a live run's directory must not delete its save in progress.
      self._remove_unfinished()
      self._writing = True
    if step in self.manager.all_steps():
      return False
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    if metadata is not None:
      items[METADATA] = ocp.args.JsonSave(metadata)
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as error:  # the synchronous part, or all of it when async_save=False
      self._save_failed(step, error)
    self._pending = step if saved else None
    return saved

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
    """Blocks until the last save is complete; CheckpointSaveError if it failed."""
    step, self._pending = self._pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as error:  # raised by Orbax's background thread, e.g. tensorstore OUT_OF_RANGE
      self._save_failed(step, error)

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()

  def _save_failed(self, step: int | None, error: Exception) -> None:
    """Removes the half-written step, resyncs the manager with the disk and raises a clear error."""
    # Orbax has already dropped the steps past max_to_keep from its in-memory list (their files are
    # deleted only after a successful save): re-read the directory so latest_step() is true again.
    # No barrier here: another process may not have failed, and must not be waited for forever.
    if jax.process_index() == 0 and step is not None:
      for name in os.listdir(self.directory):
        if name.startswith(f"{step}{TMP_MARKER}"):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)  # frees its space
    self.manager.reload()
    latest = self.manager.latest_step()
    code = _os_errno(error)
    cause = f"{type(error).__name__}: {_first_line(error)}"
    if code is not None:
      cause = f"OS error [Errno {code}] {os.strerror(code)}; {cause}"
    resume = (f"it resumes from {self.step_directory(latest)}, the newest complete checkpoint"
              if latest is not None else "it starts over: there is no complete checkpoint yet")
    advice = ("free space on that filesystem (or raise its quota / file size limit) and run again"
              if code in _NO_SPACE else "fix the cause and run again")
    where = self.step_directory(step) if step is not None else self.directory
    raise CheckpointSaveError(
        f"could not save the checkpoint of step {step} to {where} ({cause}). The run stops here "
        f"rather than train on without checkpoints; {advice}: {resume}",
        step=step, directory=where) from error

  def _remove_unfinished(self) -> None:
    """Warns about and removes step directories an interrupted save left half-written."""
    if jax.process_index() == 0 and os.path.isdir(self.directory):
      leftovers = sorted(n for n in os.listdir(self.directory) if TMP_MARKER in n)
      if leftovers:
        log.warning("removing %d unfinished checkpoint(s) left by an interrupted save under %s: %s",
                    len(leftovers), self.directory, ", ".join(leftovers))
      for name in leftovers:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    _sync("checkpoint_remove_unfinished")



def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else "no message"


def _os_errno(error: BaseException) -> int | None:
  """The errno behind `error`: an OSError in its chain, or tensorstore's "[os_error_code='N']"."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno:
      return error.errno
    match = re.search(r"os_error_code='?(\d+)", str(error))
    if match:
      return int(match.group(1))
    error = error.__cause__ or error.__context__
  return None


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
