"""Scalar logging for a run: a JSONL log (one object per record) and TensorBoard event files,
both under the workdir, written by process 0 only."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def _to_python(value: Any) -> Any:
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    value = np.asarray(value)
    return value.item() if value.size == 1 else value.tolist()
  return value


class MetricWriter:
  """`write(step, scalars)` appends `{"step", "time", **scalars}` to `<workdir>/metrics.jsonl`
  and to TensorBoard under `<workdir>/tensorboard`. No-op on processes other than 0."""

  def __init__(self, workdir: str, *, enabled: bool | None = None, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        from tensorboardX import SummaryWriter  # Lazy: only the chief process writes events.
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def write(self, step: int, scalars: Mapping[str, Any], **fields: Any) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "time": time.time(), **fields}
    record.update({k: _to_python(v) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record, allow_nan=True) + "\n")
    if self._tb is not None:
      for key, value in record.items():
        if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All JSONL records of a run, in file order (a resumed run appends after the old ones)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def latest_per_step(records: list[dict[str, Any]], key: str) -> dict[int, float]:
  """`{step: value}` keeping the last record of each step (a resumed run redoes some steps)."""
  return {r["step"]: r[key] for r in records if r.get(key) is not None}
