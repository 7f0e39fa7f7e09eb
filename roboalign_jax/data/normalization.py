"""Per-dimension q01/q99 normalisation of actions and states to [-1, 1], and its statistics.

Statistics are computed once per (dataset content, standardisation, statistics recipe), with a
progress bar, and cached as JSON at `<cache_dir>/<dataset fingerprint>/statistics-<key>.json`;
the key is a hash of the dataset fingerprint and the recipe, so changing either recomputes. The
gripper dimension of the action is never normalised (it is already in {-1, +1}).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from roboalign_jax.data.rlds_source import RLDSSource
from roboalign_jax.data.specs.common import GRIPPER_DIM
from roboalign_jax.data.step_index import StepIndex

# Bump when the computation below changes, so old cache files are not reused.
RECIPE = {"quantiles": [0.01, 0.99], "version": 1}
_EPS = 1e-8


@dataclasses.dataclass
class Stats:
  """Per-dimension statistics of one array field. All float32 [D]."""
  q01: np.ndarray
  q99: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  min: np.ndarray
  max: np.ndarray

  @classmethod
  def of(cls, values: np.ndarray) -> "Stats":
    values = np.asarray(values, np.float64)
    q01, q99 = np.quantile(values, RECIPE["quantiles"], axis=0)
    return cls(q01, q99, values.mean(0), values.std(0), values.min(0), values.max(0))

  def to_json(self) -> dict:
    return {k: np.asarray(v, np.float64).tolist() for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_json(cls, data: dict) -> "Stats":
    return cls(**{k: np.asarray(v, np.float32) for k, v in data.items()})


@dataclasses.dataclass
class DatasetStatistics:
  """Statistics of one dataset: action (7) and state (native width), plus counts."""
  action: Stats
  state: Stats
  num_steps: int
  num_episodes: int
  key: str = ""
  source: str = "computed"  # or "cache": whether this run computed them

  def to_json(self) -> dict:
    return {"action": self.action.to_json(), "state": self.state.to_json(), "num_steps": self.num_steps,
            "num_episodes": self.num_episodes, "key": self.key}

  @classmethod
  def from_json(cls, data: dict, source: str = "cache") -> "DatasetStatistics":
    return cls(Stats.from_json(data["action"]), Stats.from_json(data["state"]), int(data["num_steps"]),
               int(data["num_episodes"]), data.get("key", ""), source)


def action_mask(dim: int = 7) -> np.ndarray:
  """bool [dim]: which action dims are normalised (all but the gripper)."""
  mask = np.ones(dim, bool)
  mask[GRIPPER_DIM] = False
  return mask


def normalize(values: np.ndarray, stats: Stats, mask: np.ndarray | None = None) -> np.ndarray:
  """[..., D] -> [..., D]: (x - q01) / (q99 - q01) * 2 - 1, clipped to [-1, 1], on `mask` dims.

  A constant dimension (q99 == q01) maps to 0.
  """
  values = np.asarray(values, np.float32)
  low, high = stats.q01.astype(np.float32), stats.q99.astype(np.float32)
  span = high - low
  scaled = np.where(span > _EPS, (values - low) / np.maximum(span, _EPS) * 2 - 1, 0.0)
  scaled = np.clip(scaled, -1.0, 1.0)
  return np.where(mask, scaled, values).astype(np.float32) if mask is not None else scaled.astype(np.float32)


def unnormalize(values: np.ndarray, stats: Stats, mask: np.ndarray | None = None) -> np.ndarray:
  """Inverse of `normalize` for values in [-1, 1] ([..., D] -> [..., D])."""
  values = np.asarray(values, np.float32)
  low, high = stats.q01.astype(np.float32), stats.q99.astype(np.float32)
  restored = (values + 1) / 2 * (high - low) + low
  return np.where(mask, restored, values).astype(np.float32) if mask is not None else restored.astype(np.float32)


def statistics_key(fingerprint: str, transform: dict[str, Any] | None = None) -> str:
  payload = json.dumps({"dataset": fingerprint, "recipe": RECIPE, "transform": transform or {}}, sort_keys=True)
  return hashlib.sha256(payload.encode()).hexdigest()[:16]


def compute_statistics(source: RLDSSource, index: StepIndex, *, progress: bool = True) -> DatasetStatistics:
  actions, states = [], []
  for episode_id in tqdm(index.episodes, desc=f"statistics {source.name}", disable=not progress, leave=False):
    episode = source.episode(int(episode_id))
    actions.append(episode.actions)
    states.append(episode.states)
  return DatasetStatistics(Stats.of(np.concatenate(actions)), Stats.of(np.concatenate(states)),
                           num_steps=index.num_steps, num_episodes=len(index.episodes))


def load_or_compute(source: RLDSSource, index: StepIndex, cache_dir: str, *,
                    transform: dict[str, Any] | None = None, progress: bool = True) -> DatasetStatistics:
  """Cached statistics of `source` (computed and written on first use)."""
  fingerprint = source.fingerprint()
  key = statistics_key(fingerprint, {**(transform or {}), "episodes": len(index.episodes)})
  path = os.path.join(cache_dir, fingerprint, f"statistics-{key}.json")
  if os.path.isfile(path):
    with open(path) as f:
      return DatasetStatistics.from_json(json.load(f), source="cache")
  stats = compute_statistics(source, index, progress=progress)
  stats.key = key
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(stats.to_json(), f, indent=1)
  os.replace(tmp, path)
  return stats
