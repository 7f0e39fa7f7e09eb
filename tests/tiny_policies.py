"""Servable policy directories of the tiny random backbone (tests/tiny_qwen.py), for the serving
tests and benchmark: a FAST-token policy and a Stage 3 VLA policy with an untrained head; and a
LIBERO request to send them."""

import jax
import numpy as np

from roboalign_jax.data import image_transforms, pipeline
from roboalign_jax.fast import FASTTokenizer
from roboalign_jax.models import action_head
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.policies import fast_policy, vla_policy
import tiny_qwen

IMAGE_SIZE = (112, 112)


def fast_policy_dir(policy_dir: str, handles, horizon: int) -> str:
  """A FAST policy (greedy decoding of 8 tokens; FAST fitted on the handles' chunks)."""
  backbone = backbone_lib.load_dir(tiny_qwen.checkpoint_dir(IMAGE_SIZE[0] * IMAGE_SIZE[1]))
  fast = FASTTokenizer.fit(pipeline.action_chunks(handles, horizon), vocab_size=64)
  policy = fast_policy.make(backbone, backbone.params, fast, handles[0].statistics, layout="libero",
                            action_horizon=horizon, image_size=IMAGE_SIZE, max_new_tokens=8)
  return fast_policy.save(policy, policy_dir)


def vla_policy_dir(policy_dir: str, handle, horizon: int, seed: int = 0) -> str:
  """A VLA policy: layer-2 features of two LIBERO cameras into the "small" head, randomly initialised."""
  backbone_dir = tiny_qwen.checkpoint_dir(IMAGE_SIZE[0] * IMAGE_SIZE[1])
  backbone = backbone_lib.load_dir(backbone_dir)
  config = action_head.config_from_variant("small", action_horizon=horizon, action_dim=32, max_state_dim=64,
                                           max_num_embodiments=32)
  config = config.replace(backbone_feature_dim=None if backbone.hidden_size == config.backbone_embedding_dim
                          else backbone.hidden_size)
  params = jax.device_get(action_head.init_params(config, jax.random.PRNGKey(seed)))
  return vla_policy.save(policy_dir, head_params=params, head_config=config, backbone=backbone,
                         backbone_hash=backbone_lib.content_hash(backbone_dir), layout="libero",
                         statistics=handle.statistics, cameras=("primary", "wrist"), image_size=IMAGE_SIZE,
                         state_width=64, feature_layer=2, embodiment_id=31, max_seq_len=192, mask_padding=True,
                         seed=seed)


def libero_request(handle, t: int = 3) -> dict:
  """A LIBERO serving request from step t of the handle's first episode, as a client sends it
  (dataset orientation)."""
  source = handle.source
  episode = source.episode(int(handle.index.episodes[0]))
  request = {"observation/state": episode.states[t], "prompt": episode.instruction}
  for camera, (path, shape) in source.spec.cameras.items():
    request[path] = np.asarray(image_transforms.decode(episode.images[camera][t], shape, dataset="x", episode=0,
                                                       step=t, path=path))
  return request
