"""Weighted mixtures of datasets with exact, deterministic proportions.

Grain's `MapDataset.mix` interleaves its parents in a fixed pattern that realises the weights
exactly over every window of sum(integer weights) elements, so a mixture's proportions do not
drift with the sample count and the mixed order stays a pure function of the index (needed for
per-process sharding and resumption). Each parent is already shuffled, so the pattern carries no
information a model could exploit.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np


def check_weights(weights: Sequence[float], names: Sequence[str]) -> np.ndarray:
  weights = np.asarray(weights, np.float64)
  if len(weights) != len(names):
    raise ValueError(f"{len(weights)} mixture weights for {len(names)} datasets {list(names)}")
  bad = [f"{n}={w}" for n, w in zip(names, weights) if not (np.isfinite(w) and w > 0)]
  if bad:
    raise ValueError(f"mixture weights must be positive and finite; got {bad}")
  return weights / weights.sum()


def mix(datasets: Sequence[grain.MapDataset], weights: Sequence[float], names: Sequence[str]) -> grain.MapDataset:
  """One MapDataset drawing from `datasets` in proportion to `weights` (any positive scale)."""
  proportions = check_weights(weights, names)
  if len(datasets) == 1:
    return datasets[0]
  return grain.MapDataset.mix(list(datasets), proportions.tolist())
