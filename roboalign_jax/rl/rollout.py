"""GRPO rollouts: the backbones' KV-cache sampler (`models/sampling.py`), under the name the
public API gives it (`rl.rollout.generate`)."""

from roboalign_jax.models.sampling import Rollout, generate

__all__ = ["Rollout", "generate"]
