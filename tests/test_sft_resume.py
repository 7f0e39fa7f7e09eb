"""Fault tolerance of the SFT stage through `launch/train.py` (tests/scenarios.py): a run killed
with SIGKILL and started again continues exactly as an uninterrupted run (metrics and data
order), and SIGTERM checkpoints at the step reached, exits 0 and exports nothing."""

import os

import pytest

import scenarios
import sft_helpers

pytestmark = pytest.mark.slow

NUM_STEPS = 30
COMPARED = ("loss", "token_accuracy", "grad_norm", "lr", "batch_fingerprint", "padding_fraction")


def _flags(every_steps=5):
  paths = sft_helpers.prepared()
  return ("--config.train.log_every=1", f"--config.checkpoint.every_steps={every_steps}",
          "--config.data.global_batch_size=4", "--config.sft.images_per_batch=8",
          f"--config.data.cache_dir={paths['cache_dir']}", "--config.checkpoint.async_save=False")


def _config(steps=NUM_STEPS):
  p = sft_helpers.prepared()
  return (f"configs/sft.py:tiny,processor={p['processor_dir']},fast={p['fast_dir']},data={p['fixtures']['bridge']},"
          f"vqa={p['conversations']['vqa']},steps={steps}")


def test_kill9_then_resume_equals_uninterrupted(tmp_path):
  scenarios.kill9_resume(_config(), tmp_path, *_flags(), "--config.export.hf_dir=none", num_steps=NUM_STEPS,
                         kill_after=10, compared=COMPARED)


def test_sigterm_checkpoints_and_exits_zero(tmp_path):
  workdir, _, _ = scenarios.sigterm_stop(_config(100000), tmp_path, *_flags(every_steps=100000), min_steps=3)
  assert not os.path.exists(os.path.join(workdir, "hf"))  # a stopped run does not export
