"""Checkpoint faults injected for real: SIGKILL while Orbax's background write is in progress, a
full disk (RLIMIT_FSIZE with SIGXFSZ ignored, so writes fail with EFBIG as on a full filesystem)
during async and synchronous saves and during a training run, and an unreadable newest
checkpoint next to `max_to_keep`.

What they prove: a half-written step is never read, and the next run's first save removes its
leftover directory; a failed save raises `CheckpointSaveError` naming the step, its directory and
the OS error at the next save or wait (not Orbax's raw error, not silently), with every earlier
checkpoint intact; the run stops there, and a rerun resumes from the newest complete checkpoint
and retakes exactly the lost steps; `max_to_keep` never deletes the last readable checkpoint.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from roboalign_jax.train import debug
from roboalign_jax.train.checkpoint import TMP_MARKER, Checkpointer
from roboalign_jax.train.metrics import read_metrics

import launch_helpers
from configs_loader import REPO_ROOT, load_config

FILE_LIMIT = 64 * 1024  # bytes: above every file of a small tree's checkpoint, below a 1 MB array's

_PRELUDE = """
import json, os, resource, signal, sys
import numpy as np
from roboalign_jax.train.checkpoint import Checkpointer, CheckpointSaveError

def small(value):
  return {"w": np.full((4,), value, np.float32)}
"""

# Saves step 10, then starts saving ~64 MB at step 20 and, as soon as `save` has returned (the
# write goes on in Orbax's background thread), records the directory listing and SIGKILLs itself.
_KILL_MID_SAVE = _PRELUDE + """
directory, evidence = sys.argv[1:]
ckpt = Checkpointer(directory, every_steps=10, max_to_keep=1)
ckpt.save(10, small(10.0), metadata={"step": 10})
ckpt.wait()
big = {"w": np.random.default_rng(0).random(16 * 2**20, dtype=np.float32)}  # incompressible
ckpt.save(20, big, metadata={"step": 20})
with open(evidence, "w") as f:
  json.dump(sorted(os.listdir(directory)), f)
os.kill(os.getpid(), signal.SIGKILL)
"""

# One directory per way a save can fail: async (surfacing at the next save, or at wait) and sync.
_DISK_FULL = _PRELUDE + """
root, evidence, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
results = {}
for mode in ("async_next_save", "async_wait", "sync"):
  directory = os.path.join(root, mode)
  ckpt = Checkpointer(directory, every_steps=10, max_to_keep=1, async_save=mode != "sync")
  ckpt.save(10, small(10.0), metadata={"step": 10})
  ckpt.wait()
  # A file past `limit` bytes now fails with EFBIG instead of killing the process.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
  result = results[mode] = {"save_returned": False}
  try:
    ckpt.save(20, {"w": np.random.default_rng(0).random(2**18, dtype=np.float32)}, metadata={"step": 20})
    result["save_returned"] = True
    if mode == "async_wait":
      ckpt.wait()
    else:
      ckpt.save(30, small(30.0), metadata={"step": 30})
    result["no_error"] = True
  except CheckpointSaveError as e:
    result.update(error=str(e), step=e.step, directory=e.directory, cause=type(e.__cause__).__name__)
  resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
  result["latest_step"] = ckpt.latest_step()
  result["listing"] = sorted(os.listdir(directory))
  ckpt.close()  # the error was reported once; closing does not raise it again
  result["closed"] = True
with open(evidence, "w") as f:
  json.dump(results, f)
"""


def _child(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                        env=launch_helpers.subprocess_env(), timeout=300, **kwargs)


def _abstract():
  return {"w": jax.ShapeDtypeStruct((4,), np.float32,
                                    sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}


def _restored_value(ckpt: Checkpointer):
  step, state, metadata = ckpt.restore_latest(_abstract(), fallback=False)
  assert metadata == {"step": step}
  values = np.asarray(state["w"])
  assert np.all(values == values[0]), values
  return step, float(values[0])


def test_kill9_during_async_save_resumes_from_previous_checkpoint(tmp_path, caplog):
  directory, evidence = str(tmp_path / "checkpoints"), str(tmp_path / "listing.json")
  proc = _child(_KILL_MID_SAVE, directory, evidence)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  # At kill time step 20 was still being written: only its temporary directory existed.
  at_kill = json.load(open(evidence))
  assert at_kill == ["10", f"20{TMP_MARKER}"], at_kill
  assert sorted(os.listdir(directory)) == at_kill  # and max_to_keep=1 had not deleted step 10

  # The next run ignores the half-written step 20: it resumes from step 10.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(directory, resumed)
  ckpt = Checkpointer(directory, every_steps=10, max_to_keep=1)
  assert ckpt.latest_step() == 10 and _restored_value(ckpt) == (10, 10.0)
  # Its first save removes the leftover, with a warning (here a step other than 20, as after a
  # SIGTERM at step 30): only once step 30 is complete does max_to_keep=1 delete step 10.
  with caplog.at_level(logging.WARNING):
    assert ckpt.save(30, {"w": np.full((4,), 30.0, np.float32)}, metadata={"step": 30})
  warning = " ".join(r.getMessage() for r in caplog.records)
  assert "removing 1 unfinished checkpoint(s)" in warning and f"20{TMP_MARKER}" in warning, warning
  ckpt.wait()
  assert sorted(os.listdir(directory)) == ["30"] and _restored_value(ckpt) == (30, 30.0)
  ckpt.close()
  # And step 20 itself can be saved again over the leftover.
  ckpt = Checkpointer(resumed, every_steps=10, max_to_keep=1)
  assert _restored_value(ckpt) == (10, 10.0)
  assert ckpt.save(20, {"w": np.full((4,), 20.0, np.float32)}, metadata={"step": 20})
  ckpt.close()
  assert sorted(os.listdir(resumed)) == ["20"]
  ckpt = Checkpointer(resumed, every_steps=10)
  assert _restored_value(ckpt) == (20, 20.0)
  ckpt.close()


def test_disk_full_during_save_names_the_step_and_keeps_earlier_checkpoints(tmp_path):
  evidence = str(tmp_path / "results.json")
  proc = _child(_DISK_FULL, str(tmp_path), evidence, str(FILE_LIMIT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(evidence))
  for mode, result in results.items():
    directory = str(tmp_path / mode)
    assert "error" in result, (mode, result)
    message = result["error"]
    assert f"could not save the checkpoint of step 20 to {directory}/20 (" in message, message
    assert f"[Errno 27] {os.strerror(27)}" in message and "free space" in message, message
    assert f"resumes from {directory}/10, the newest complete checkpoint" in message, message
    assert result["step"] == 20 and result["directory"] == f"{directory}/20"
    assert result["cause"] == "ValueError"  # Orbax's own error stays chained for the traceback
    # Async saves return and fail in the background; a synchronous one fails in `save` itself.
    assert result["save_returned"] == (mode != "sync"), (mode, result)
    # The half-written step 20 is gone, step 10 is kept despite max_to_keep=1, and the manager
    # knows it (Orbax had already dropped it from its list of steps to keep).
    assert result["listing"] == ["10"] and result["latest_step"] == 10, (mode, result)
    assert result["closed"]
    # Space freed: a new run reads step 10 and saves step 20.
    ckpt = Checkpointer(directory, every_steps=10, max_to_keep=1)
    assert _restored_value(ckpt) == (10, 10.0)
    ckpt.save(20, {"w": np.full((4,), 20.0, np.float32)}, metadata={"step": 20})
    ckpt.close()
    assert sorted(os.listdir(directory)) == ["20"]


def _corrupt_state(step_dir: str):
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for name in files:
      if os.sep + "d" in root:  # array data files
        path = os.path.join(root, name)
        os.truncate(path, os.path.getsize(path) // 2)


def test_max_to_keep_does_not_count_an_unreadable_checkpoint(tmp_path, caplog):
  directory = str(tmp_path / "checkpoints")
  ckpt = Checkpointer(directory, every_steps=10, max_to_keep=2)
  for step in (10, 20):
    ckpt.save(step, {"w": np.full((4,), float(step), np.float32)}, metadata={"step": step})
  ckpt.close()
  _corrupt_state(os.path.join(directory, "20"))
  ckpt = Checkpointer(directory, every_steps=10, max_to_keep=2)
  with caplog.at_level(logging.WARNING):
    step, state, _ = ckpt.restore_latest(_abstract())
  assert step == 10 and "falling back" in caplog.text
  ckpt.save(30, {"w": np.full((4,), 30.0, np.float32)}, metadata={"step": 30})
  ckpt.wait()
  # Had the unreadable step 20 counted, max_to_keep=2 would keep [20, 30] and delete readable 10.
  assert sorted(os.listdir(directory)) == ["10", "30"]
  assert sorted(os.listdir(directory + ".unreadable")) == ["20"]
  ckpt.close()


# Execs launch/train.py with a file size limit: SIG_IGN and the limit both survive exec (and no
# preexec_fn runs Python in a fork of this multithreaded process).
_LIMITED_EXEC = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


@pytest.mark.slow
def test_disk_full_stops_the_run_and_a_rerun_retakes_the_lost_steps(tmp_path):
  """The training loop: a checkpoint that cannot be written stops the run with the step named
  (instead of training on without checkpoints); the rerun resumes from the newest complete
  checkpoint and takes the lost steps again exactly as the failed run did."""
  flags = ("--config.train.log_every=1", "--config.checkpoint.every_steps=10",
           "--config.checkpoint.max_to_keep=2")

  def config(steps):
    c = load_config(f"configs/debug.py:tiny,steps={steps}")
    c.checkpoint.update(every_steps=10, max_to_keep=2)
    c.train.log_every = 1
    return c

  workdir = str(tmp_path / "run")
  debug.train(config(20), workdir)
  assert launch_helpers.checkpoint_steps(workdir) == [10, 20]
  # Continue to step 40 as a user would, on a "full disk": every checkpoint has a file over 32 KiB
  # (the metrics and TensorBoard files stay under it). Same 8 devices as this process: same mesh.
  command = launch_helpers.train_command("configs/debug.py:tiny,steps=40", workdir, *flags)
  proc = subprocess.run([sys.executable, "-c", _LIMITED_EXEC, str(32 * 1024), *command[1:]], cwd=REPO_ROOT,
                        env=launch_helpers.subprocess_env(num_devices=len(jax.devices())), capture_output=True,
                        text=True, timeout=600)
  # launch/train.py prints the error as its last line, without Python's traceback.
  assert proc.returncode == 1
  assert (f"\nerror: could not save the checkpoint of step 30 to {workdir}/checkpoints/30"
          in proc.stderr), proc.stderr[-3000:]
  assert "free space" in proc.stderr and f"resumes from {workdir}/checkpoints/20" in proc.stderr
  records = read_metrics(workdir)
  failed = {r["step"]: r["loss"] for r in records if "loss" in r and r["step"] > 20}
  assert sorted(failed) == list(range(21, 41))  # it trained on to the next save, where the failure surfaced
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]  # nothing half-written

  summary = debug.train(config(40), workdir)
  assert summary["resumed_from"] == 20 and summary["step"] == 40
  assert launch_helpers.checkpoint_steps(workdir) == [30, 40]
  # The retaken steps 21..40 are the very steps the failed run took (same state, same data order).
  again = {r["step"]: r["loss"] for r in read_metrics(workdir)[len(records):] if "loss" in r}
  assert again == failed, {s: (again.get(s), failed[s]) for s in failed}
