"""Checkpoint weights as HF-style safetensors: one `model.safetensors`, or shards listed by
`model.safetensors.index.json`. Shared by the backbones' and the action head's checkpoint I/O.
Nothing is ever unpickled: a directory with only `.bin`/`.pt` weights is refused with a hint."""

from __future__ import annotations

import json
import os
import re
from typing import Callable

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_SHARD = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors")


def weight_files(directory: str) -> list[str]:
  """The safetensors files of a checkpoint directory (the index's shards when there is one)."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"checkpoint directory {directory!r} not found")
  index = os.path.join(directory, INDEX)
  if os.path.isfile(index):
    with open(index) as f:
      try:
        weight_map = json.load(f).get("weight_map")
      except json.JSONDecodeError as e:
        raise ValueError(f"{index}: not valid JSON ({e})") from None
    if not weight_map:
      raise ValueError(f"{index}: no 'weight_map'; expected a safetensors index")
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.isfile(os.path.join(directory, f))]
    if missing:
      raise FileNotFoundError(f"{index} lists shards that are missing from {directory!r}: {missing}")
    return [os.path.join(directory, f) for f in files]
  if os.path.isfile(os.path.join(directory, SINGLE)):
    return [os.path.join(directory, SINGLE)]
  others = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
  if others:
    return [os.path.join(directory, f) for f in others]
  pickled = [f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
  hint = f" (found {pickled}: pickle-based weights are never loaded; convert them to safetensors)" if pickled else ""
  raise FileNotFoundError(f"no weights in {directory!r}: expected {SINGLE} or {INDEX} with its shards{hint}")


def read_tensors(directory: str, wanted: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
  """Tensors by name (those passing `wanted`), as NumPy (bf16 via ml_dtypes); others stay on disk."""
  out = {}
  for path in weight_files(directory):
    with safe_open(path, framework="numpy") as f:
      for name in f.keys():
        if wanted is None or wanted(name):
          out[name] = f.get_tensor(name)
  return out


def write_sharded(tensors: dict[str, np.ndarray], out_dir: str, max_shard_bytes: int = 5 * 1024 ** 3) -> None:
  """`model.safetensors`, or shards of at most `max_shard_bytes` with an index. The weight files of
  an earlier export in `out_dir` are removed first (they would be read back too); nothing else is."""
  os.makedirs(out_dir, exist_ok=True)
  for f in os.listdir(out_dir):
    if f == INDEX or _SHARD.fullmatch(f):
      os.remove(os.path.join(out_dir, f))
  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    if current and size + tensors[name].nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensors[name]
    size += tensors[name].nbytes
  shards.append(current)
  meta = {"format": "pt"}  # transformers and GR00T's loaders expect this marker
  if len(shards) == 1:
    save_file(shards[0], os.path.join(out_dir, SINGLE), metadata=meta)
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(out_dir, fname), metadata=meta)
    weight_map.update({name: fname for name in shard})
  with open(os.path.join(out_dir, INDEX), "w") as f:
    json.dump({"metadata": {"total_size": sum(v.nbytes for v in tensors.values())}, "weight_map": weight_map}, f,
              indent=2)
