"""The answers of a run, one JSONL line per (benchmark, example id, model, generation settings):
an interrupted run re-reads the file and generates only what is missing.

    cache = AnswerCache(os.path.join(out_dir, "answers.jsonl"))
    cache.get(key) -> str | None;  cache.put_many([(key, answer), ...])   # appended + flushed

A key is {"benchmark", "id", "model", "generation"}; `model` identifies the weights (label and
content hash), `generation` the decoding settings. A last line cut off by an interruption is
dropped (with a warning); a malformed line elsewhere is an error naming the file and line.
"""

from __future__ import annotations

from typing import Iterable

from roboalign_jax.eval import jsonl_log

Key = tuple[str, str, str, str]  # (benchmark, id, model, generation)
FIELDS = ("benchmark", "id", "model", "generation")


def make_key(benchmark: str, example_id: str, model: str, generation: str) -> Key:
  return (benchmark, example_id, model, generation)


class AnswerCache:
  """The answers of `path` by key, over a ResumableLog (append, flush, torn-tail handling)."""

  def __init__(self, path: str):
    self.path = path
    self._log = jsonl_log.ResumableLog(path, FIELDS)

  def __len__(self) -> int:
    return len(self._log)

  def __contains__(self, key: Key) -> bool:
    return self._log.done(key)

  def get(self, key: Key) -> str | None:
    record = self._log.get(key)
    return None if record is None else record["answer"]

  def put_many(self, items: Iterable[tuple[Key, str]]) -> None:
    self._log.extend({**dict(zip(FIELDS, key)), "answer": answer} for key, answer in items)
