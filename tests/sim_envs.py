"""The simulators' own environments (.venv-<name>), built for the slow tests through their Makefile
targets, as a user builds them: `make sim-metaworld` is idempotent (a stamp file), so only the first
run on a machine installs anything."""

import fcntl
import os
import subprocess

from configs_loader import REPO_ROOT


def sim_python(name: str) -> str:
  """The python of the simulator environment `name` ("metaworld", "libero")."""
  return os.path.join(REPO_ROOT, f".venv-{name}", "bin", "python")


def make_sim_env(name: str = "metaworld") -> str:
  """Creates (first run) or checks (later runs) .venv-<name> with `make sim-<name>`; returns its python.

  Under `make test` two pytest-xdist workers may ask for the same environment at once; a file lock
  makes the second wait for the first's install instead of pip-installing into the same directory.
  """
  with open(os.path.join(REPO_ROOT, f".venv-{name}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    result = subprocess.run(["make", "-s", f"sim-{name}"], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=1800)
  assert result.returncode == 0, f"make sim-{name} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
  python = sim_python(name)
  assert os.path.isfile(python), f"make sim-{name} did not create {python}"
  return python
