"""SIGTERM / SIGINT handling: finish the current step, checkpoint, exit 0.

Schedulers (SLURM, Kubernetes) send SIGTERM before killing a job. The handler only sets a flag;
the training loop polls it between steps so the checkpoint holds a consistent state. With several
processes, all of them must stop at the same step, so the flag is agreed on collectively.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionGuard:
  """Context manager installing the handlers; `should_stop()` is True once a signal arrived
  on any process."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self._event = threading.Event()
    self._previous = {}
    self.signal_name: str | None = None

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    self._event.set()

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def should_stop(self) -> bool:
    local = self._event.is_set()
    if jax.process_count() == 1:
      return local
    # Every process must take the same branch, or the next collective deadlocks.
    flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
    return bool(np.any(flags))
