"""Runs a simulator harness against a policy served on this machine: what launch/eval_libero.py and
launch/eval_metaworld.py share. Standard library only (the launchers stay light; the server is
launch/serve.py in its own process and the harness runs in the simulator's environment)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Callable, Sequence

import sim_recording  # launch/sim_recording.py, beside this script

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def run_harness(policy_dir: str, harness: Callable[[int], Sequence[str]], *, name: str, max_batch: int,
                start_timeout: float) -> None:
  """Serves `policy_dir` (launch/serve.py) on a free loopback port, waits for its /healthz, runs
  `harness(port)` (a command line) with headless MuJoCo rendering, and stops the server.
  Raises SystemExit naming `name` when the harness fails."""
  port = free_port()
  server = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "launch", "serve.py"),
                             f"--policy_dir={policy_dir}", f"--port={port}", f"--max_batch={max_batch}"])
  try:
    wait_healthy(f"http://127.0.0.1:{port}/healthz", server, start_timeout)
    result = subprocess.run(list(harness(port)), env=sim_recording.headless_env(), stdin=subprocess.DEVNULL)
    if result.returncode:
      raise SystemExit(f"the {name} harness failed with exit code {result.returncode}")
  finally:
    server.terminate()
    try:
      server.wait(timeout=30)
    except subprocess.TimeoutExpired:
      server.kill()
