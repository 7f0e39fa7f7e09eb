"""Reading the published files of a benchmark (parquet tables of HF datasets, JSON / JSONL),
with errors that name the file and what was expected."""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Sequence

import pyarrow.parquet as pq

from roboalign_jax.eval.mllm.examples import BenchmarkError


def parquet_rows(paths: Sequence[str], benchmark: str, required: Sequence[str]) -> list[dict]:
  """Rows of the parquet files, in order; each file must have the `required` columns."""
  rows: list[dict] = []
  for path in paths:
    try:
      table = pq.read_table(path)
    except Exception as error:
      raise BenchmarkError(benchmark, path, f"could not be read as parquet ({error})") from error
    missing = [c for c in required if c not in table.column_names]
    if missing:
      raise BenchmarkError(benchmark, path, f"has columns {table.column_names}; expected the published columns "
                           f"{list(required)} (missing {missing})")
    rows.extend(table.to_pylist())
  if not rows:
    raise BenchmarkError(benchmark, ", ".join(paths), "holds no rows")
  return rows


def find_parquet(path: str, benchmark: str, candidates: Sequence[str], expected: str) -> list[str]:
  """`path` itself when it is a parquet file, else the first candidate glob (relative to `path`)
  that matches; BenchmarkError naming `expected` otherwise."""
  if os.path.isfile(path):
    if not path.endswith(".parquet"):
      raise BenchmarkError(benchmark, path, f"is not a .parquet file; expected {expected}")
    return [path]
  if not os.path.isdir(path):
    raise BenchmarkError(benchmark, path, f"does not exist; expected {expected}")
  for pattern in candidates:
    found = sorted(glob.glob(os.path.join(path, pattern)))
    if found:
      return found
  raise BenchmarkError(benchmark, path, f"has none of {list(candidates)}; expected {expected}")


def image_bytes(value: Any, benchmark: str, where: str, column: str) -> bytes:
  """Encoded bytes of an HF `Image` cell ({"bytes": ..., "path": ...}) or of a raw binary cell."""
  if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
    return bytes(value["bytes"])
  if isinstance(value, (bytes, bytearray)):
    return bytes(value)
  raise BenchmarkError(benchmark, where, f"column {column!r} is {type(value).__name__}; expected an HF Image "
                       "cell {'bytes': <PNG/JPEG bytes>, 'path': ...}")


def read_json(path: str, benchmark: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise BenchmarkError(benchmark, path, f"is not valid JSON ({error})") from error


def read_jsonl(path: str, benchmark: str) -> list[dict]:
  """The JSON objects of a JSONL file (blank lines skipped)."""
  if not os.path.isfile(path):
    raise BenchmarkError(benchmark, path, "does not exist; expected a JSONL file (one JSON object per line)")
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise BenchmarkError(benchmark, f"{path} line {number}", f"is not valid JSON ({error})") from error
      if not isinstance(record, dict):
        raise BenchmarkError(benchmark, f"{path} line {number}", f"is {type(record).__name__}; expected an object")
      records.append(record)
  if not records:
    raise BenchmarkError(benchmark, path, "holds no records")
  return records


def require(record: dict, fields: dict[str, type | tuple[type, ...]], benchmark: str, where: str) -> None:
  """Each field present with the given type(s)."""
  for name, kind in fields.items():
    if name not in record:
      raise BenchmarkError(benchmark, where, f"has no {name!r} field; expected fields {sorted(fields)}")
    if not isinstance(record[name], kind):
      raise BenchmarkError(benchmark, where, f"field {name!r} is {record[name]!r}; expected {kind}")
