"""An append-only JSONL log of finished work items, keyed by some of their fields, that an
interrupted run re-reads to skip what is done (closed-loop trials, CALVIN chains, MLLM answers).

    log = ResumableLog(path, ("suite", "task_id", "trial"))
    if not log.done((suite, task, trial)): log.append({...})   # appended and flushed at once

A last line cut off by a kill (no trailing newline, not JSON) is dropped with a warning and the
file rewritten without it; a malformed line anywhere else, or one missing a key field, is an
error naming the file and line. Standard library only: simulator environments import it too.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)


class ResumableLog:

  def __init__(self, path: str, key_fields: Sequence[str]):
    self.path, self.key_fields = path, tuple(key_fields)
    self.records: list[dict] = []
    self._by_key: dict[tuple, dict] = {}
    if os.path.isfile(path):
      self._read()

  def _read(self) -> None:
    with open(self.path) as f:
      lines = f.readlines()
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        key = self.key(record)
      except (json.JSONDecodeError, KeyError, TypeError) as error:
        if number == len(lines) and not line.endswith("\n"):
          log.warning("%s: dropping the incomplete last line (an interrupted write)", self.path)
          self._rewrite()
          return
        raise ValueError(f"{self.path} line {number} is malformed ({type(error).__name__}: {error}); expected "
                         f"one JSON object per line with {list(self.key_fields)}") from error
      self.records.append(record)
      self._by_key[key] = record

  def _rewrite(self) -> None:
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in self.records)
    os.replace(tmp, self.path)

  def key(self, record: Mapping[str, Any]) -> tuple:
    return tuple(record[k] for k in self.key_fields)

  def done(self, key: Iterable) -> bool:
    return tuple(key) in self._by_key

  def get(self, key: Iterable) -> dict | None:
    return self._by_key.get(tuple(key))

  def __len__(self) -> int:
    return len(self.records)

  def append(self, record: Mapping[str, Any]) -> None:
    self.extend([record])

  def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
    records = [dict(r) for r in records]
    keys = [self.key(r) for r in records]  # a record without its key fields fails before anything is written
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    with open(self.path, "a") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
      f.flush()
      os.fsync(f.fileno())
    self.records.extend(records)
    self._by_key.update(zip(keys, records))
