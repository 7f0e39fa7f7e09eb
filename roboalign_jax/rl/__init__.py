"""Stage 2 (GRPO): the RoboAlign reward, group advantages and the clipped policy loss, and the
KV-cache rollout sampler. Use the modules: `rl.rewards`, `rl.grpo`, `rl.rollout`."""

from roboalign_jax.rl import grpo, rewards, rollout

__all__ = ["grpo", "rewards", "rollout"]
