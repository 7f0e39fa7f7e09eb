"""Fault tolerance end to end through `launch/train.py`: a run killed with SIGKILL and started
again continues exactly as an uninterrupted run (metrics and data order, step for step), and
SIGTERM leaves a checkpoint at the step reached and exits 0."""

import os
import signal

import pytest

import launch_helpers
from roboalign_jax.train.checkpoint import Checkpointer
from roboalign_jax.train.metrics import latest_per_step, read_metrics

pytestmark = pytest.mark.slow

NUM_STEPS = 1500
FLAGS = ("--config.train.log_every=1", "--config.checkpoint.every_steps=100")
CONFIG = f"configs/debug.py:tiny,steps={NUM_STEPS}"
COMPARED = ("loss", "accuracy", "grad_norm", "lr", "batch_fingerprint", "eval/loss")



def test_kill9_then_resume_equals_uninterrupted(tmp_path):
  reference_dir = str(tmp_path / "reference")
  proc = launch_helpers.run(CONFIG, reference_dir, *FLAGS)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  # Learning signal on held-out data: chance accuracy is 1/64.
  held_out = latest_per_step(read_metrics(reference_dir), "eval/accuracy")
  assert sorted(held_out) == list(range(100, NUM_STEPS + 1, 100))
  assert held_out[100] > 0.5 and held_out[NUM_STEPS] > 0.99

  workdir = str(tmp_path / "killed")
  first = launch_helpers.start(CONFIG, workdir, *FLAGS)
  # Kill only once a checkpoint at step 300 or later is finalised, well before the run can finish.
  launch_helpers.wait_for(lambda: any(s >= 300 for s in launch_helpers.checkpoint_steps(workdir)), 300,
                          "a checkpoint at step >= 300", proc=first)
  first.send_signal(signal.SIGKILL)
  first.wait()
  killed_at = max(latest_per_step(read_metrics(workdir), "loss"))
  assert killed_at < NUM_STEPS, "the run finished before it could be killed"

  proc = launch_helpers.run(CONFIG, workdir, *FLAGS)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  records = read_metrics(workdir)
  resumed = [r["step"] for r in records if r.get("event") == "resumed"]
  assert len(resumed) == 1 and 300 <= resumed[0] <= killed_at

  reference = read_metrics(reference_dir)
  for key in COMPARED:
    want = latest_per_step(reference, key)
    got = latest_per_step(records, key)
    assert sorted(got) == sorted(want) and max(want) == NUM_STEPS
    later = [s for s in want if s > resumed[0]]
    mismatched = [s for s in later if got[s] != want[s]]
    assert not mismatched, f"{key} differs after resume at steps {mismatched[:5]}"


def test_sigterm_checkpoints_and_exits_zero(tmp_path):
  workdir = str(tmp_path / "preempted")
  proc = launch_helpers.start("configs/debug.py:tiny,steps=1000000", workdir,
                              "--config.train.log_every=1", "--config.checkpoint.every_steps=100000")
  launch_helpers.wait_for(lambda: len(read_metrics(workdir)) >= 50, 300, "50 logged steps", proc=proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  records = read_metrics(workdir)
  preempted = [r for r in records if r.get("event") == "preempted"]
  assert len(preempted) == 1 and preempted[0]["signal"] == "SIGTERM"
  stopped_at = preempted[0]["step"]
  assert stopped_at == max(latest_per_step(records, "loss"))
  # The only checkpoint is the one written on SIGTERM, at exactly the step reached.
  assert launch_helpers.checkpoint_steps(workdir) == [stopped_at]
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1)
  assert checkpointer.read_metadata(stopped_at)["config"]["stage"] == "debug"
  checkpointer.close()
