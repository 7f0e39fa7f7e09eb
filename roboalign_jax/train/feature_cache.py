"""Stage 3's feature cache. With augmentation off, the backbone's layer-L features of a sample are a
pure function of (backbone, sample, transforms), so they are computed once and the head trains
from the cache instead of running the frozen backbone every step (`vla.cache_features=True`).

    <cache_dir>/vla_features/<key>/
      info.json              what the key covers, per-dataset step counts, "complete": true
      <k>.array_record       dataset k's steps in flat step order, one record each: safetensors bytes
                             of features [T, hidden], attention_mask [T], state [S], actions [H, D],
                             action_mask [H, D]

The key hashes the backbone's content hash, each dataset's statistics key (itself a hash of the
dataset's content and standardisation), the feature layer and every data field that changes a
sample (image size, cameras, horizon, widths, prompt length, system prompt); a change to any of
them is a different cache. `info.json` is written last, so an interrupted build is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors
from tqdm.auto import tqdm

from roboalign_jax.data import samples
from roboalign_jax.data.collate import collate
from roboalign_jax.data.pipeline import DatasetHandle, StepReader

log = logging.getLogger(__name__)

INFO_FILE = "info.json"
_BF16 = np.dtype(jnp.bfloat16)
_BF16_KEY = "features.bfloat16_bits"
CACHED_KEYS = ("features", "attention_mask", "state", "actions", "action_mask")
# Data fields that change what a sample (and so its features) is.
SAMPLE_FIELDS = ("image_size", "cameras", "action_horizon", "history", "max_state_dim", "max_action_dim",
                 "max_seq_len", "system_prompt", "model_family", "seed")


def cache_key(backbone_hash: str, handles: list[DatasetHandle], data: ml_collections.ConfigDict, layer: int) -> dict:
  """The description the cache is keyed by (JSON); `key_of` hashes it."""
  return {"backbone_sha256": backbone_hash, "feature_layer": int(layer),
          "datasets": [{"name": h.name, "spec": h.source.spec.name, "statistics": h.statistics.key,
                        "fingerprint": h.source.fingerprint(), "num_steps": h.index.num_steps} for h in handles],
          "data": {k: data.get(k) for k in SAMPLE_FIELDS}, "version": 1}


def key_of(description: dict) -> str:
  return hashlib.sha256(json.dumps(description, sort_keys=True, default=list).encode()).hexdigest()[:16]


class FeatureCache:
  """Random access to a complete cache: `read(dataset id, flat step id) -> sample`, `collate`."""

  def __init__(self, directory: str):
    from array_record.python.array_record_module import ArrayRecordReader  # lazy: only cached runs read it
    with open(os.path.join(directory, INFO_FILE)) as f:
      self.info = json.load(f)
    self.directory = directory
    self._readers = [ArrayRecordReader(os.path.join(directory, f"{k}.array_record"))
                     for k in range(len(self.info["datasets"]))]

  def read(self, dataset_id: int, step_id: int) -> dict[str, np.ndarray]:
    record = load_tensors(self._readers[dataset_id].read([int(step_id)])[0])
    if _BF16_KEY in record:
      record["features"] = record.pop(_BF16_KEY).view(_BF16)
    return record

  @staticmethod
  def collate(rows: list[dict]) -> dict[str, np.ndarray]:
    return collate(rows)

  def __getstate__(self):  # Grain workers reopen the files
    return {"directory": self.directory}

  def __setstate__(self, state):
    self.__init__(state["directory"])


def build(root: str, description: dict, *, handles: list[DatasetHandle], data: ml_collections.ConfigDict,
          features_fn: Callable[[dict], np.ndarray], to_model_batch: Callable[[dict], dict], batch_size: int,
          progress: bool = True) -> str:
  """Computes (or finds) the cache of `description` under `root`; returns its directory.

  features_fn: model batch -> float [B, T, hidden] on the host; to_model_batch: a collated VLA
  batch -> model batch (train/vla.py `model_batch`). Steps are read without augmentation, in
  flat order, `batch_size` at a time (the last batch is filled up with repeats, then trimmed).
  """
  from array_record.python.array_record_module import ArrayRecordWriter  # lazy: only cached runs write it
  directory = os.path.join(root, "vla_features", key_of(description))
  if os.path.isfile(os.path.join(directory, INFO_FILE)):
    return directory
  os.makedirs(directory, exist_ok=True)
  unaugmented = ml_collections.ConfigDict(data.to_dict())
  unaugmented.augment = False
  reader = StepReader(handles, unaugmented, train=False)
  builder = samples.make_builder(unaugmented)
  total = sum(h.index.num_steps for h in handles)
  bar = tqdm(total=total, desc="caching features", disable=not progress, dynamic_ncols=True)
  for dataset_id, handle in enumerate(handles):
    writer = ArrayRecordWriter(os.path.join(directory, f"{dataset_id}.array_record"), "group_size:1")
    n = handle.index.num_steps
    for start in range(0, n, batch_size):
      ids = [min(i, n - 1) for i in range(start, start + batch_size)]
      batch = to_model_batch(builder.collate([builder(reader(dataset_id, i, i)) for i in ids]))
      feats = np.asarray(features_fn(batch))
      for row in range(min(batch_size, n - start)):
        record = {k: np.asarray(batch[k][row]) for k in CACHED_KEYS[1:]}
        if feats.dtype == _BF16:  # safetensors' NumPy API has no bfloat16: store the bits
          record[_BF16_KEY] = feats[row].view(np.uint16)
        else:
          record["features"] = feats[row]
        writer.write(save_tensors(record))
      bar.update(min(batch_size, n - start))
    writer.close()
  bar.close()
  with open(os.path.join(directory, INFO_FILE), "w") as f:
    json.dump({**description, "complete": True}, f, indent=1)
  log.info("cached the features of %d steps in %s", total, directory)
  return directory
