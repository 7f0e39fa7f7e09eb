"""Stacking examples into a batch (shared by the pipeline and the sample builders)."""

from __future__ import annotations

from typing import Any

import numpy as np


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
  """Stacks a list of examples: arrays along a new leading axis, strings (and other objects) into lists."""
  out = {}
  # Keys every example has: a mixture of robot and conversation samples shares the token fields.
  keys = [k for k in examples[0] if all(k in e for e in examples[1:])]
  for key in keys:
    value = examples[0][key]
    values = [e[key] for e in examples]
    out[key] = np.stack(values) if isinstance(value, (np.ndarray, np.generic)) else values
  return out
