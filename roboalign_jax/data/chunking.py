"""Windows over an episode: the action chunk after a step and the observation history before it."""

from __future__ import annotations

import numpy as np


def action_chunk(actions: np.ndarray, t: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
  """actions[t : t + horizon], padded past the episode end by repeating the last action.

  actions: [T, D] -> (chunk [horizon, D], mask bool [horizon], True on real steps). Repeating the
  last action (rather than zeros) keeps the gripper state of padded steps meaningful; the mask
  removes them from losses either way.
  """
  steps = np.arange(t, t + horizon)
  mask = steps < len(actions)
  return actions[np.minimum(steps, len(actions) - 1)], mask


def history_steps(t: int, history: int) -> tuple[np.ndarray, np.ndarray]:
  """Steps [t - history + 1, ..., t] clamped at 0 (int [history]) and the mask of real ones."""
  steps = np.arange(t - history + 1, t + 1)
  return np.maximum(steps, 0), steps >= 0
