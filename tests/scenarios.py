"""The fault-tolerance scenarios every stage's tests run through `launch/train.py`, as a user would:

  kill9_resume   an uninterrupted run, and a run killed with SIGKILL after a checkpoint and started
                 again: one resume, from a checkpoint at or after `kill_after`, and every compared
                 metric equal step for step after it (data order included, via batch fingerprints);
  sigterm_stop   SIGTERM mid-run: exit 0, one `preempted` event, a checkpoint at exactly the step
                 reached and no other.
"""

import signal

import launch_helpers
from roboalign_jax.train.metrics import latest_per_step, read_metrics


def _ok(proc):
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def kill9_resume(config: str, tmp_path, *flags: str, num_steps: int, kill_after: int, compared, timeout=300,
                 progress_key: str = "loss"):
  """Returns (reference records, resumed run's records, the step it resumed from)."""
  reference_dir = str(tmp_path / "reference")
  _ok(launch_helpers.run(config, reference_dir, *flags, timeout=timeout * 3))
  workdir = str(tmp_path / "killed")
  first = launch_helpers.start(config, workdir, *flags)
  # Kill only once a checkpoint at `kill_after` or later is finalised, before the run can finish.
  launch_helpers.wait_for(lambda: any(s >= kill_after for s in launch_helpers.checkpoint_steps(workdir)), timeout,
                          f"a checkpoint at step >= {kill_after}", proc=first)
  first.send_signal(signal.SIGKILL)
  first.wait()
  killed_at = max(latest_per_step(read_metrics(workdir), progress_key))
  assert killed_at < num_steps, "the run finished before it could be killed"

  _ok(launch_helpers.run(config, workdir, *flags, timeout=timeout * 3))
  records = read_metrics(workdir)
  resumed = [r["step"] for r in records if r.get("event") == "resumed"]
  assert len(resumed) == 1 and kill_after <= resumed[0] <= killed_at, (resumed, killed_at)
  reference = read_metrics(reference_dir)
  for key in compared:
    want, got = latest_per_step(reference, key), latest_per_step(records, key)
    assert sorted(got) == sorted(want) and max(want) == num_steps, key
    mismatched = [s for s in want if s > resumed[0] and got[s] != want[s]]
    assert not mismatched, f"{key} differs after resume at steps {mismatched[:5]}"
  return reference, records, resumed[0]


def sigterm_stop(config: str, tmp_path, *flags: str, progress_key: str = "loss", min_steps: int = 2,
                 timeout=600):
  """Returns (workdir, records, the step it stopped at)."""
  workdir = str(tmp_path / "preempted")
  proc = launch_helpers.start(config, workdir, *flags)
  launch_helpers.wait_for(lambda: len([r for r in read_metrics(workdir) if progress_key in r]) >= min_steps,
                          timeout, f"{min_steps} logged steps", proc=proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 0
  records = read_metrics(workdir)
  preempted = [r for r in records if r.get("event") == "preempted"]
  assert len(preempted) == 1 and preempted[0]["signal"] == "SIGTERM"
  stopped_at = preempted[0]["step"]
  assert stopped_at == max(latest_per_step(records, progress_key))
  # The only checkpoint is the one written on SIGTERM, at exactly the step reached.
  assert launch_helpers.checkpoint_steps(workdir) == [stopped_at]
  return workdir, records, stopped_at
