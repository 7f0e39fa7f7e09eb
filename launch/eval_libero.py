"""Evaluate a policy directory on the real LIBERO simulator in closed loop, in one command.

    make sim-libero     # once: the simulator environment .venv-libero
    python launch/eval_libero.py --policy_dir=runs/vla/policy --suite=libero_spatial \\
        --trials=0-49 --workers=4 --out_dir=runs/eval/libero_spatial

Starts `launch/serve.py` on a free loopback port, waits for its /healthz, runs the simulator-side
harness (roboalign_jax/eval/libero/evaluate.py, in `--sim_python`) against it with `--workers`
env processes, and stops the server. Results: `<out_dir>/results.jsonl` (one line per trial; a
rerun resumes), `summary.md` / `summary.json`, `videos/`. Flags after `--` go to the harness
(e.g. `-- --max_steps=50 --videos_per_task=2`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string("policy_dir", None, "Policy directory to serve (written by a trainer).", required=True)
flags.DEFINE_string("out_dir", None, "Where results, summary and videos go.", required=True)
flags.DEFINE_string("suite", "libero_spatial", "Comma-separated LIBERO suites.")
flags.DEFINE_string("tasks", "all", "Task ids: 'all', 'k', 'a,b' or 'a-b'.")
flags.DEFINE_string("trials", "0-49", "Trials per task; trial k starts from the task's fixed initial state k.")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Simulator processes, each with its own env.")
flags.DEFINE_integer("max_batch", 8, "Server: most requests answered by one batched forward.")
flags.DEFINE_string("sim_python", os.path.join(REPO_ROOT, ".venv-libero", "bin", "python"),
                    "Python of the simulator environment (`make sim-libero`).")
flags.DEFINE_float("server_start_timeout", 600.0, "Seconds to wait for the server's /healthz.")


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if server.poll() is not None:
      raise RuntimeError(f"the policy server exited with code {server.returncode} before answering {url}")
    try:
      with urllib.request.urlopen(url, timeout=2) as response:
        if response.status == 200:
          return
    except OSError:
      time.sleep(0.5)
  raise TimeoutError(f"the policy server did not answer {url} within {timeout:.0f} s")


def main(argv):
  if not os.path.isfile(FLAGS.sim_python):
    raise app.UsageError(f"--sim_python={FLAGS.sim_python} does not exist; create the simulator environment "
                         "with `make sim-libero`")
  port = free_port()
  server = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "launch", "serve.py"),
                             f"--policy_dir={FLAGS.policy_dir}", f"--port={port}", f"--max_batch={FLAGS.max_batch}"])
  try:
    wait_healthy(f"http://127.0.0.1:{port}/healthz", server, FLAGS.server_start_timeout)
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
           "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "egl")}
    command = [FLAGS.sim_python, "-m", "roboalign_jax.eval.libero.evaluate", f"--port={port}",
               f"--suite={FLAGS.suite}", f"--tasks={FLAGS.tasks}", f"--trials={FLAGS.trials}",
               f"--workers={FLAGS.workers}", f"--out_dir={FLAGS.out_dir}", *argv[1:]]
    result = subprocess.run(command, env=env, stdin=subprocess.DEVNULL)
    if result.returncode:
      raise SystemExit(f"the LIBERO harness failed with exit code {result.returncode}")
  finally:
    server.terminate()
    try:
      server.wait(timeout=30)
    except subprocess.TimeoutExpired:
      server.kill()


if __name__ == "__main__":
  app.run(main)
