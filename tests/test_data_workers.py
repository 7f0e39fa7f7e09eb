"""Grain worker processes under faults: no shared memory left in /dev/shm (closed, abandoned or
exiting iterators), and a killed, stalled or quitting worker gives an error naming it, never a hang.

Each scenario runs in a subprocess with a hard timeout, with real worker processes and real
signals. A `sitecustomize` on the subprocess's path (loaded by the spawned workers too) logs
the name of every shared-memory block created, so the /dev/shm check sees only this run's blocks
even while other processes use shared memory.
"""

import os
import subprocess
import sys

import pytest

from roboalign_jax import data

SHM = "/dev/shm"
pytestmark = pytest.mark.skipif(not os.path.isdir(SHM), reason="POSIX shared memory in /dev/shm")

SITECUSTOMIZE = """
import os
if os.environ.get("SHM_LOG"):
  from multiprocessing import shared_memory
  _init = shared_memory.SharedMemory.__init__
  def _logged_init(self, name=None, create=False, size=0):
    _init(self, name, create, size)
    if create:
      with open(os.environ["SHM_LOG"], "a") as f:
        f.write(self.name.lstrip("/") + "\\n")
  shared_memory.SharedMemory.__init__ = _logged_init
"""

# Runs one scenario; prints "ok" at the end. argv: scenario, fixture path, cache dir.
SCRIPT = r'''
import gc, multiprocessing as mp, os, signal, sys, time
import numpy as np
from roboalign_jax import data
from roboalign_jax.data import workers

def created():
  return set(open(os.environ["SHM_LOG"]).read().split()) if os.path.exists(os.environ["SHM_LOG"]) else set()

def alive_blocks():
  return sorted(n for n in created() if os.path.exists("/dev/shm/" + n))

def quit_in_worker(d, s):
  # A reader that calls sys.exit inside one worker (the first to get here): exit code 0.
  if mp.parent_process() is not None and s % 7 == 3:
    try:
      os.close(os.open(os.environ["SHM_LOG"] + ".quit", os.O_CREAT | os.O_EXCL))
      sys.exit(0)
    except FileExistsError:
      pass
  return {"x": np.full((64, 64), s, np.float32)}

def main():
  scenario, path, cache = sys.argv[1:4]
  def config(**overrides):
    return data.data_config(datasets=[data.dataset_entry("libero", path)], cache_dir=cache, global_batch_size=4,
                            progress=False, action_horizon=8, image_size=(64, 64), **overrides)
  def stream(**overrides):
    return data.make_dataset(config(num_workers=2, **overrides), process_index=0, process_count=1)
  def grain_workers():
    return [p for p in mp.active_children() if p.name.startswith("grain-process-prefetch")]

  if scenario == "leaks":
    closed = iter(stream())
    batches = [next(closed) for _ in range(6)]   # kept past close and exit
    closed.close()
    gc.collect()
    assert created(), "no shared memory was used; the check would prove nothing"
    assert not alive_blocks(), ("left after close()", alive_blocks())
    dropped = iter(stream())
    next(dropped)
    del dropped  # garbage collected without close()
    gc.collect()
    time.sleep(1)
    assert not alive_blocks(), ("left after dropping an iterator", alive_blocks())
    global abandoned
    abandoned = iter(stream())  # still referenced, never closed, at interpreter exit
    last = next(abandoned)
    print("ok", len(created()), flush=True)

  elif scenario in ("kill", "stop"):
    plain = iter(data.make_dataset(config(), process_index=0, process_count=1))
    expected = [next(plain)["step"] for _ in range(16)]
    it = iter(stream(worker_timeout_s=600))
    got = [next(it)["step"] for _ in range(2)]
    victim = grain_workers()[0].pid
    if scenario == "kill":
      os.kill(victim, signal.SIGKILL)
    else:
      it.timeout_s = 3  # after start-up, a short wait
      os.kill(victim, signal.SIGSTOP)
    start = time.monotonic()
    try:
      for _ in range(50):
        got.append(next(it)["step"])
      raise AssertionError("no error after the worker was " + scenario + "ped")
    except (workers.WorkerDied, workers.WorkerTimeout) as e:
      print("ERROR", type(e).__name__, time.monotonic() - start, str(e), flush=True)
      assert f"(pid {victim})" in str(e), str(e)
    for want, have in zip(expected, got):
      np.testing.assert_array_equal(want, have)
    assert not [p for p in grain_workers() if p.exitcode is None], "workers still running after the error"
    try:
      next(it)
      raise AssertionError("a failed iterator went on")
    except RuntimeError as e:
      assert "stopped after an error" in str(e), str(e)
    # The position after the last delivered batch resumes exactly in a fresh iterator.
    fresh = iter(stream())
    fresh.set_state(it.get_state())
    np.testing.assert_array_equal(next(fresh)["step"], expected[len(got)])
    fresh.close()
    print("ok", flush=True)

  elif scenario == "quit":
    it = iter(data.make_dataset(config(num_workers=2, worker_timeout_s=600), process_index=0, process_count=1,
                                read=quit_in_worker, collate_fn=lambda rows: {"x": np.stack([r["x"] for r in rows])}))
    start = time.monotonic()
    try:
      for _ in range(50):
        next(it)
      raise AssertionError("no error after a worker quit")
    except workers.WorkerDied as e:
      print("ERROR", type(e).__name__, time.monotonic() - start, str(e), flush=True)
      assert "exited with code 0" in str(e), str(e)
    print("ok", flush=True)

if __name__ == "__main__":
  main()
'''


@pytest.fixture(scope="module")
def fixture_path(tmp_path_factory):
  return data.write_fixture("libero", str(tmp_path_factory.mktemp("rlds")), 3, 0, episode_length=(20, 30))


def run_scenario(scenario, fixture_path, tmp_path, timeout=240):
  """Runs SCRIPT's `scenario` in a subprocess; returns (stdout, stderr, names of blocks it created)."""
  (tmp_path / "site").mkdir()
  (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
  (tmp_path / "scenario.py").write_text(SCRIPT)
  log = tmp_path / "shm.log"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "SHM_LOG": str(log),
         "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
  out = subprocess.run([sys.executable, str(tmp_path / "scenario.py"), scenario, fixture_path, str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=timeout, env=env)
  assert out.returncode == 0 and "ok" in out.stdout, (out.stdout[-3000:], out.stderr[-5000:])
  names = set(log.read_text().split()) if log.exists() else set()
  return out.stdout, out.stderr, names


def left_in_shm(names):
  return sorted(n for n in names if os.path.exists(os.path.join(SHM, n)))


def error_line(stdout):
  return next(line for line in stdout.splitlines() if line.startswith("ERROR"))


def test_worker_runs_leave_no_shared_memory(fixture_path, tmp_path):
  """Closed, dropped and abandoned (alive at exit) iterators, with batches held past close."""
  _, stderr, names = run_scenario("leaks", fixture_path, tmp_path)
  assert names
  assert not left_in_shm(names)
  assert "leaked shared_memory" not in stderr, stderr[-3000:]


def test_killed_worker_raises_naming_it_and_state_resumes(fixture_path, tmp_path):
  stdout, stderr, names = run_scenario("kill", fixture_path, tmp_path)
  line = error_line(stdout)
  assert line.startswith("ERROR WorkerDied") and "killed by SIGKILL" in line and "worker " in line, line
  assert float(line.split()[2]) < 30, line  # Grain polls every second; we every 0.2 s
  # Blocks the killed worker had built but not sent are removed at exit by the resource tracker.
  assert not left_in_shm(names)


def test_stalled_worker_times_out_naming_it(fixture_path, tmp_path):
  stdout, stderr, names = run_scenario("stop", fixture_path, tmp_path)
  line = error_line(stdout)
  assert line.startswith("ERROR WorkerTimeout") and "stopped (SIGSTOP)" in line and "worker_timeout_s=3" in line, line
  assert float(line.split()[2]) < 30, line
  assert not left_in_shm(names)


def test_worker_that_exits_cleanly_is_reported_not_waited_on(fixture_path, tmp_path):
  """Grain waits forever on a worker that exited with code 0 (a reader calling sys.exit)."""
  stdout, _, _ = run_scenario("quit", fixture_path, tmp_path)
  line = error_line(stdout)
  assert line.startswith("ERROR WorkerDied") and "exited with code 0" in line, line
  assert float(line.split()[2]) < 30, line
