"""Fields every stage's config shares: seed, mesh, sharding rules, checkpointing, logging."""

from __future__ import annotations

import ml_collections

from roboalign_jax.parallel.sharding import DEFAULT_RULES


def base_config(stage: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.stage = stage
  config.seed = 0
  # Axis sizes of the ('data', 'fsdp', 'tensor') mesh; -1 takes the remaining devices.
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # Logical axis name -> mesh axis (or tuple of axes, or None for replicated).
  config.sharding = ml_collections.ConfigDict({"rules": DEFAULT_RULES})
  config.checkpoint = ml_collections.ConfigDict(
      {"every_steps": 1000, "max_to_keep": 3, "async_save": True})
  # eval_every: steps between held-out evaluations (0 = only at the end, if the stage has one).
  config.train = ml_collections.ConfigDict({"num_steps": 1000, "log_every": 10, "eval_every": 0})
  return config
