"""An SFT run killed with SIGKILL and started again continues exactly as an uninterrupted run:
metrics and data order (batch fingerprints) agree step for step after the resume."""

import signal

import pytest

import launch_helpers
import sft_helpers
from roboalign_jax.train.metrics import latest_per_step, read_metrics

pytestmark = pytest.mark.slow

NUM_STEPS = 30
COMPARED = ("loss", "token_accuracy", "grad_norm", "lr", "batch_fingerprint", "padding_fraction")


def _flags():
  paths = sft_helpers.prepared()
  return ("--config.train.log_every=1", "--config.checkpoint.every_steps=5", "--config.data.global_batch_size=4",
          "--config.sft.images_per_batch=8", "--config.export.hf_dir=none", f"--config.data.cache_dir={paths['cache_dir']}",
          "--config.checkpoint.async_save=False")


def _config():
  p = sft_helpers.prepared()
  return (f"configs/sft.py:tiny,processor={p['processor_dir']},fast={p['fast_dir']},data={p['fixtures']['bridge']},"
          f"vqa={p['conversations']['vqa']},steps={NUM_STEPS}")



def test_kill9_then_resume_equals_uninterrupted(tmp_path):
  reference_dir = str(tmp_path / "reference")
  proc = launch_helpers.run(_config(), reference_dir, *_flags())
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

  workdir = str(tmp_path / "killed")
  first = launch_helpers.start(_config(), workdir, *_flags())
  launch_helpers.wait_for(lambda: any(s >= 10 for s in launch_helpers.checkpoint_steps(workdir)), 300,
                          "a checkpoint at step >= 10", proc=first)
  first.send_signal(signal.SIGKILL)
  first.wait()
  killed_at = max(latest_per_step(read_metrics(workdir), "loss"))
  assert killed_at < NUM_STEPS, "the run finished before it could be killed"

  proc = launch_helpers.run(_config(), workdir, *_flags())
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  records = read_metrics(workdir)
  resumed = [r["step"] for r in records if r.get("event") == "resumed"]
  assert len(resumed) == 1 and 10 <= resumed[0] <= killed_at
  reference = read_metrics(reference_dir)
  for key in COMPARED:
    want, got = latest_per_step(reference, key), latest_per_step(records, key)
    assert sorted(got) == sorted(want) and max(want) == NUM_STEPS
    mismatched = [s for s in want if s > resumed[0] and got[s] != want[s]]
    assert not mismatched, f"{key} differs after resume at steps {mismatched[:5]}"
