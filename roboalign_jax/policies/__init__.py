"""Policies: a dataset layout's transforms around a model, saved as a directory and served.

    policy = policies.load(policy_dir)
    policy.infer({"observation/image": ..., "observation/wrist_image": ..., "observation/state": ...,
                  "prompt": ...})["actions"]       # float32 [action_horizon, 7]
"""

from roboalign_jax.policies.policy import Policy, PolicyDescription, load

__all__ = ["Policy", "PolicyDescription", "load"]
