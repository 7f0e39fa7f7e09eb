"""Running `launch/train.py` as a subprocess, the way a user does, for end-to-end tests."""

import os
import subprocess
import sys
import time

from configs_loader import REPO_ROOT

TRAIN = os.path.join(REPO_ROOT, "launch", "train.py")


def subprocess_env(num_devices: int = 1, **extra: str) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONUNBUFFERED"] = "1"
  env.update(extra)
  return env


def train_command(config: str, workdir: str, *flags: str) -> list[str]:
  return [sys.executable, TRAIN, f"--config={os.path.join(REPO_ROOT, config)}",
          f"--workdir={workdir}", *flags]


def start(config: str, workdir: str, *flags: str, num_devices: int = 1, log_path=None, **env):
  out = open(log_path or os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".log"), "w")
  return subprocess.Popen(train_command(config, workdir, *flags), cwd=REPO_ROOT,
                          env=subprocess_env(num_devices, **env), stdout=out,
                          stderr=subprocess.STDOUT)


def run(config: str, workdir: str, *flags: str, num_devices: int = 1, timeout: float = 600):
  proc = subprocess.run(train_command(config, workdir, *flags), cwd=REPO_ROOT,
                        env=subprocess_env(num_devices), capture_output=True, text=True,
                        timeout=timeout)
  return proc


def wait_for(predicate, timeout: float, what: str, interval: float = 0.01, proc=None):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f"process exited (rc={proc.returncode}) before {what}")
    time.sleep(interval)
  raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the finalised checkpoints in a run's workdir (Orbax's temporary dirs excluded)."""
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def import_launcher(name: str):
  """launch/<name>.py as a module, loaded once per test process: its absl flags can be defined
  only once, and several test files call into the same launcher."""
  key = f"launch_{name}"
  if key not in sys.modules:
    import importlib.util
    spec = importlib.util.spec_from_file_location(key, os.path.join(REPO_ROOT, "launch", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[key] = module
  return sys.modules[key]
