"""BridgeData V2 in its two published RLDS layouts, and its standard cleaning.

Current layout (TFDS `bridge_dataset` 1.0.0 from the Bridge authors, what OpenVLA/Octo train on):
  steps/observation/image_0..image_3  uint8 [256, 256, 3] jpeg (image_3 is absent in many
                                       episodes and stored as zeros then)
  steps/observation/state             float32 [7]  (xyz, roll/pitch/yaw, gripper open amount)
  steps/action                        float32 [7]  (delta xyz, delta rpy, gripper open amount in [0, 1])
  steps/language_instruction          text;  steps/language_embedding float32 [512]
  episode_metadata/{file_path, episode_id, has_image_0..3, has_language}
Older Open X-Embodiment copy (`bridge`):
  steps/observation/{image [480, 640, 3], state [7], natural_language_instruction,
  natural_language_embedding [512]}; steps/action/{world_vector [3], rotation_delta [3],
  open_gripper bool, terminate_episode float32}

Cleaning (as Octo/OpenVLA do): drop the first step (the arm has often not started moving and the
frame is stale), relabel action dims 0-5 as state[t+1, :6] - state[t, :6] (the recorded commands
are noisier than the achieved motion) -- which drops the last step, having no successor -- and
binarise the gripper to {-1 open, +1 close}.
"""

from __future__ import annotations

import numpy as np

from roboalign_jax.data.errors import DataError
from roboalign_jax.data.specs.common import (OPEN_AMOUNT, DatasetSpec, RawEpisode, StandardEpisode, image_feature,
                                             instruction_of, require_finite, rlds_step_features, GRIPPER_CLOSE,
                                             GRIPPER_OPEN)

IMAGE_SHAPE = (256, 256, 3)
OXE_IMAGE_SHAPE = (480, 640, 3)


def features(replace=None):
  """The published features; `replace`: observation key -> feature (see rlds_step_features)."""
  import tensorflow_datasets as tfds  # lazy: heavy, needed only for its builder and feature classes
  observation = {f"image_{i}": image_feature(IMAGE_SHAPE) for i in range(4)}
  observation["state"] = tfds.features.Tensor(shape=(7,), dtype=np.float32)
  step = rlds_step_features(observation, tfds.features.Tensor(shape=(7,), dtype=np.float32), extra={
      "language_instruction": tfds.features.Text(),
      "language_embedding": tfds.features.Tensor(shape=(512,), dtype=np.float32),
  }, replace=replace)
  metadata = {"file_path": tfds.features.Text(), "episode_id": tfds.features.Scalar(dtype=np.int32),
              "has_language": tfds.features.Scalar(dtype=np.bool_),
              **{f"has_image_{i}": tfds.features.Scalar(dtype=np.bool_) for i in range(4)}}
  return tfds.features.FeaturesDict({"steps": tfds.features.Dataset(step),
                                     "episode_metadata": tfds.features.FeaturesDict(metadata)})


def oxe_features(replace=None):
  """The published features; `replace`: observation key -> feature (see rlds_step_features)."""
  import tensorflow_datasets as tfds  # lazy: heavy, needed only for its builder and feature classes
  observation = {
      "image": image_feature(OXE_IMAGE_SHAPE),
      "state": tfds.features.Tensor(shape=(7,), dtype=np.float32),
      "natural_language_instruction": tfds.features.Text(),
      "natural_language_embedding": tfds.features.Tensor(shape=(512,), dtype=np.float32),
  }
  action = tfds.features.FeaturesDict({
      "world_vector": tfds.features.Tensor(shape=(3,), dtype=np.float32),
      "rotation_delta": tfds.features.Tensor(shape=(3,), dtype=np.float32),
      "open_gripper": tfds.features.Scalar(dtype=np.bool_),
      "terminate_episode": tfds.features.Scalar(dtype=np.float32),
  })
  step = rlds_step_features(observation, action, replace=replace)
  return tfds.features.FeaturesDict({"steps": tfds.features.Dataset(step)})


def _clean(raw: RawEpisode, states: np.ndarray, gripper: np.ndarray, instruction: str,
           images: dict[str, list[bytes]]) -> StandardEpisode:
  """Shared Bridge cleaning. states: [T, 7]; gripper: [T] already in {-1, +1}."""
  n = len(states)
  if n < 3:
    raise DataError(f"episode has {n} steps; Bridge cleaning (drop first, relabel from next state) "
                    "needs at least 3", dataset=raw.dataset, episode=raw.index)
  step_ids = np.arange(n, dtype=np.int32)
  require_finite(raw, "observation/state", states, step_ids)
  keep = slice(1, n - 1)  # drop the first step; the last has no next state to relabel from
  movement = states[2:, :6] - states[1:n - 1, :6]
  actions = np.concatenate([movement, gripper[keep, None]], axis=1).astype(np.float32)
  return StandardEpisode(dataset=raw.dataset, episode=raw.index, actions=actions,
                         states=states[keep].astype(np.float32), instruction=instruction,
                         images={cam: frames[keep] for cam, frames in images.items()},
                         step_ids=step_ids[keep])


def standardize(raw: RawEpisode) -> StandardEpisode:
  actions = raw.fields["action"]
  require_finite(raw, "action", actions)
  gripper = OPEN_AMOUNT.standardize_episode(actions[:, 6])
  return _clean(raw, raw.fields["observation/state"], gripper, instruction_of(raw, "language_instruction"),
                {"primary": raw.images["observation/image_0"]})


def standardize_oxe(raw: RawEpisode) -> StandardEpisode:
  for key in ("action/world_vector", "action/rotation_delta"):
    require_finite(raw, key, raw.fields[key])
  gripper = np.where(raw.fields["action/open_gripper"].astype(bool), GRIPPER_OPEN, GRIPPER_CLOSE)
  return _clean(raw, raw.fields["observation/state"], gripper.astype(np.float32),
                instruction_of(raw, "observation/natural_language_instruction"),
                {"primary": raw.images["observation/image"]})


SPEC = DatasetSpec(
    name="bridge", builder_name="bridge_dataset", features=features,
    cameras={"primary": ("observation/image_0", IMAGE_SHAPE)}, state_dim=7,
    required=("observation/image_0", "observation/state", "action", "language_instruction"),
    standardize=standardize, gripper=OPEN_AMOUNT, description=__doc__)

OXE_SPEC = DatasetSpec(
    name="bridge_oxe", builder_name="bridge", features=oxe_features,
    cameras={"primary": ("observation/image", OXE_IMAGE_SHAPE)}, state_dim=7,
    required=("observation/image", "observation/state", "observation/natural_language_instruction",
              "action/world_vector", "action/rotation_delta", "action/open_gripper"),
    standardize=standardize_oxe, gripper=OPEN_AMOUNT, description=__doc__)
