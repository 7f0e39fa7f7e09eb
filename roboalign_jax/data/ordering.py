"""The deterministic order in which a dataset's steps are visited, epoch after epoch.

Within an epoch every step appears once. Episodes are permuted by (seed, epoch), grouped into
blocks of `block_episodes`, and the steps inside each block are permuted: neighbouring samples
come from a bounded set of episodes, so a worker's episode cache (`RLDSSource`) is read from
instead of re-reading whole episodes per sample -- the random-access analogue of an RLDS shuffle
buffer. block_episodes=0 permutes all steps of the dataset at once (a full shuffle).
"""

from __future__ import annotations

import numpy as np

from roboalign_jax.data.step_index import StepIndex


class StepOrder:
  """Position p -> flat step id; p = epoch * num_steps + k. Picklable; caches one epoch's order."""

  def __init__(self, index: StepIndex, *, seed: int, shuffle: bool = True, block_episodes: int = 0):
    self.lengths = index.lengths
    self.offsets = index.offsets
    self.num_steps = index.num_steps
    self.seed, self.shuffle, self.block_episodes = seed, shuffle, block_episodes
    self._epoch, self._order = -1, None

  def __getstate__(self):
    return {**self.__dict__, "_epoch": -1, "_order": None}

  def epoch_order(self, epoch: int) -> np.ndarray:
    """int64 [num_steps]: the flat step ids of `epoch` in visiting order."""
    if not self.shuffle:
      return np.arange(self.num_steps)
    rng = np.random.default_rng([self.seed, epoch])
    if self.block_episodes <= 0:
      return rng.permutation(self.num_steps)
    episodes = rng.permutation(len(self.lengths))
    parts = []
    for start in range(0, len(episodes), self.block_episodes):
      block = episodes[start:start + self.block_episodes]
      steps = np.concatenate([np.arange(self.offsets[e], self.offsets[e + 1]) for e in block])
      parts.append(rng.permutation(steps))
    return np.concatenate(parts)

  def __call__(self, position: int) -> int:
    epoch, k = divmod(int(position), self.num_steps)
    if epoch != self._epoch:
      self._epoch, self._order = epoch, self.epoch_order(epoch)
    return int(self._order[k])
