"""Fault tolerance of the debug stage end to end through `launch/train.py` (the shared scenarios of
tests/scenarios.py): a run killed with SIGKILL and started again continues exactly as an
uninterrupted run, and SIGTERM leaves a checkpoint at the step reached and exits 0."""

import os

import pytest

import scenarios
from roboalign_jax.train.checkpoint import Checkpointer
from roboalign_jax.train.metrics import latest_per_step

pytestmark = pytest.mark.slow

NUM_STEPS = 1500
FLAGS = ("--config.train.log_every=1", "--config.checkpoint.every_steps=100")
CONFIG = f"configs/debug.py:tiny,steps={NUM_STEPS}"
COMPARED = ("loss", "accuracy", "grad_norm", "lr", "batch_fingerprint", "eval/loss")


def test_kill9_then_resume_equals_uninterrupted(tmp_path):
  reference, _, _ = scenarios.kill9_resume(CONFIG, tmp_path, *FLAGS, num_steps=NUM_STEPS, kill_after=300,
                                           compared=COMPARED)
  # Learning signal on held-out data: chance accuracy is 1/64.
  held_out = latest_per_step(reference, "eval/accuracy")
  assert sorted(held_out) == list(range(100, NUM_STEPS + 1, 100))
  assert held_out[100] > 0.5 and held_out[NUM_STEPS] > 0.99


def test_sigterm_checkpoints_and_exits_zero(tmp_path):
  workdir, _, stopped_at = scenarios.sigterm_stop(
      "configs/debug.py:tiny,steps=1000000", tmp_path, "--config.train.log_every=1",
      "--config.checkpoint.every_steps=100000", min_steps=50)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1)
  assert checkpointer.read_metadata(stopped_at)["config"]["stage"] == "debug"
  checkpointer.close()
