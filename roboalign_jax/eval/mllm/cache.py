"""The answers of a run, one JSONL line per (benchmark, example id, model, generation settings):
an interrupted run re-reads the file and generates only what is missing.

    cache = AnswerCache(os.path.join(out_dir, "answers.jsonl"))
    cache.get(key) -> str | None;  cache.put_many([(key, answer), ...])   # appended + flushed

A key is {"benchmark", "id", "model", "generation"}; `model` identifies the weights (label and
content hash), `generation` the decoding settings. A last line cut off by an interruption is
dropped (with a warning); a malformed line elsewhere is an error naming the file and line.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Iterable

Key = tuple[str, str, str, str]  # (benchmark, id, model, generation)


def make_key(benchmark: str, example_id: str, model: str, generation: str) -> Key:
  return (benchmark, example_id, model, generation)


class AnswerCache:

  def __init__(self, path: str):
    self.path = path
    self._answers: dict[Key, str] = {}
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
        key = make_key(record["benchmark"], record["id"], record["model"], record["generation"])
        answer = record["answer"]
      except (json.JSONDecodeError, KeyError, TypeError) as error:
        if number == len(lines) and not line.endswith("\n"):
          logging.warning("%s: dropping the incomplete last line (an interrupted write)", self.path)
          self._rewrite()
          return
        raise ValueError(f"answer cache {self.path} line {number} is malformed ({error}); expected "
                         "{'benchmark', 'id', 'model', 'generation', 'answer'}") from error
      self._answers[key] = answer

  def _rewrite(self) -> None:
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for key, answer in self._answers.items():
        f.write(_line(key, answer))
    os.replace(tmp, self.path)

  def __len__(self) -> int:
    return len(self._answers)

  def __contains__(self, key: Key) -> bool:
    return key in self._answers

  def get(self, key: Key) -> str | None:
    return self._answers.get(key)

  def put_many(self, items: Iterable[tuple[Key, str]]) -> None:
    items = list(items)
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    with open(self.path, "a") as f:
      for key, answer in items:
        f.write(_line(key, answer))
      f.flush()
      os.fsync(f.fileno())
    self._answers.update(items)


def _line(key: Key, answer: str) -> str:
  benchmark, example_id, model, generation = key
  return json.dumps({"benchmark": benchmark, "id": example_id, "model": model, "generation": generation,
                     "answer": answer}) + "\n"
