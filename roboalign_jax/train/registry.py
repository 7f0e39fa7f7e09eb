"""Stage name (`config.stage`) -> trainer entry point `train(config, workdir) -> dict`.

Entries are import paths, so launching one stage never imports the others' dependencies.
"""

from __future__ import annotations

import importlib
from typing import Callable

TRAINERS: dict[str, str] = {
    "debug": "roboalign_jax.train.debug:train",
    "grpo": "roboalign_jax.train.grpo:train",
    "sft": "roboalign_jax.train.sft:train",
    "vla": "roboalign_jax.train.vla:train",
}


def get_trainer(stage: str) -> Callable:
  if stage not in TRAINERS:
    raise ValueError(f"unknown config.stage {stage!r}; registered stages: {sorted(TRAINERS)}")
  module, function = TRAINERS[stage].split(":")
  return getattr(importlib.import_module(module), function)
