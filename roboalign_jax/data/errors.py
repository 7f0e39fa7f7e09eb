"""Errors for bad input data, and the counted skip used when a config allows skipping.

Every problem names where it is (dataset, episode, step) and what was expected, so a bad record
in a million-step dataset can be found and fixed.
"""

from __future__ import annotations

import collections
import logging

log = logging.getLogger(__name__)


class DataError(ValueError):
  """Bad input data; the message names dataset / episode / step and what was expected."""

  def __init__(self, message: str, *, dataset: str, episode: int | None = None,
               step: int | None = None):
    where = f"dataset {dataset!r}"
    if episode is not None:
      where += f", episode {episode}"
    if step is not None:
      where += f", step {step}"
    super().__init__(f"{where}: {message}")
    self.dataset, self.episode, self.step, self.reason = dataset, episode, step, message


class SkipCounter:
  """Counts skipped records by reason and logs a warning for each one (the first few in full)."""

  def __init__(self, max_warnings: int = 20):
    self.counts: collections.Counter[str] = collections.Counter()
    self.max_warnings = max_warnings

  def skip(self, error: DataError) -> None:
    self.counts[error.dataset] += 1
    total = sum(self.counts.values())
    if total <= self.max_warnings:
      log.warning("skipping bad record (%d skipped so far): %s", total, error)
    elif total == self.max_warnings + 1:
      log.warning("more bad records are being skipped; see the skip counts for totals")

  @property
  def total(self) -> int:
    return sum(self.counts.values())
