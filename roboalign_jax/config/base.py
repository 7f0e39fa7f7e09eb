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
  # fallback: resume from the newest readable checkpoint when the latest is unreadable (warned);
  # False stops with an error naming the checkpoint and the item instead.
  config.checkpoint = ml_collections.ConfigDict(
      {"every_steps": 1000, "max_to_keep": 3, "async_save": True, "fallback": True})
  config.train = ml_collections.ConfigDict({"num_steps": 1000, "log_every": 10})
  # Evaluators run by the loop: name -> {type, every (steps; 0 = after the last step only), options}.
  config.evals = ml_collections.ConfigDict()
  return config
