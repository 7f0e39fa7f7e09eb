"""The GR00T N1.5 flow-matching action head (Stage 3) in Flax Linen, weight-compatible with GR00T.

    head, params = action_head.load_gr00t(ckpt_dir)                 # GR00T checkpoint directory
    actions = action_head.sample(head, params, vl_features, state, embodiment_id, noise=None, rng=None)
    action_head.export_gr00t(params, head.config, out_dir)          # GR00T loads it strictly

    config = action_head.config_from_variant("gr00t_n1_5")          # or "tiny"; **overrides
    head = action_head.FlowMatchingHead(config); params = action_head.init_params(config, rng)
    loss, metrics = action_head.flow_matching_loss(head, params, vl_features, state, actions,
                                                   action_mask, embodiment_id, rng=rng)
"""

from roboalign_jax.models.action_head.checkpoint_io import (abstract_params, dummy_inputs, export_gr00t, gr00t_name,
                                                            init_params, load_gr00t, num_params, read_config)
from roboalign_jax.models.action_head.config import VARIANTS, ActionHeadConfig, config_from_variant
from roboalign_jax.models.action_head.flow import (euler_buckets, flow_matching_loss, interpolate, masked_mse, sample,
                                                   sample_time, timestep_bucket)
from roboalign_jax.models.action_head.model import FlowMatchingHead, check_inputs

__all__ = ["ActionHeadConfig", "FlowMatchingHead", "VARIANTS", "abstract_params", "check_inputs",
           "config_from_variant", "dummy_inputs", "euler_buckets", "export_gr00t", "flow_matching_loss",
           "gr00t_name", "init_params", "interpolate", "load_gr00t", "masked_mse", "num_params", "read_config",
           "sample", "sample_time", "timestep_bucket"]
