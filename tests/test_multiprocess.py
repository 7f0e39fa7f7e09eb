"""Two JAX processes on localhost (CPU, gloo collectives) train the debug stage on one 4-device
mesh spanning both, exactly as a 2-host GPU job would: each process feeds only its rows of the
global batch. Their losses equal a single process's with the same 4-device mesh."""

import os

import numpy as np
import portpicker
import pytest

import launch_helpers
from roboalign_jax.train.metrics import latest_per_step, read_metrics

pytestmark = pytest.mark.slow

CONFIG = "configs/debug.py:tiny,steps=20"
FLAGS = ("--config.train.log_every=1", "--config.checkpoint.every_steps=10",
         "--config.mesh.data=2", "--config.mesh.fsdp=2")


def test_two_processes_match_one(tmp_path):
  single_dir = str(tmp_path / "single")
  proc = launch_helpers.run(CONFIG, single_dir, *FLAGS, num_devices=4)
  assert proc.returncode == 0, proc.stderr[-3000:]

  multi_dir = str(tmp_path / "multi")
  port = portpicker.pick_unused_port()
  procs = [
      launch_helpers.start(CONFIG, multi_dir, *FLAGS, f"--coordinator_address=localhost:{port}",
                           "--num_processes=2", f"--process_id={i}", num_devices=2,
                           log_path=str(tmp_path / f"process_{i}.log"))
      for i in range(2)
  ]
  codes = [p.wait(timeout=300) for p in procs]
  logs = [open(tmp_path / f"process_{i}.log").read() for i in range(2)]
  assert codes == [0, 0], [log[-3000:] for log in logs]
  assert "2 processes, 4 devices" in logs[0]

  want, got = read_metrics(single_dir), read_metrics(multi_dir)
  for key in ("loss", "grad_norm", "batch_fingerprint"):
    a, b = latest_per_step(want, key), latest_per_step(got, key)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)],
                               rtol=1e-6, err_msg=key)
  # Each process checkpointed its own data-iterator position.
  saved = os.listdir(os.path.join(multi_dir, "checkpoints", "20", "data_iter"))
  assert sorted(f for f in saved if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
