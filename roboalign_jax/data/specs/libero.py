"""LIBERO as converted to RLDS by OpenVLA (`libero_{spatial,object,goal,10}_no_noops`).

  steps/observation/image        uint8 [256, 256, 3] jpeg, agent view
  steps/observation/wrist_image  uint8 [256, 256, 3] jpeg, eye-in-hand view
  steps/observation/state        float32 [8]  eef position (3), axis-angle (3), gripper qpos (2)
  steps/observation/joint_state  float32 [7]
  steps/action                   float32 [7]  OSC delta xyz / delta rotation in [-1, 1],
                                              gripper -1 open / +1 close
  steps/language_instruction     text;  episode_metadata/file_path
No-op steps (zero motion, unchanged gripper) were removed by the converter.

Images are stored as the simulator renders them rotated by 180 degrees (the converter flipped
both axes so that they are upright). They are used as stored; a policy run in the simulator must
apply the same rotation to the live cameras (`to_dataset_orientation`).

Standardisation: the gripper already follows the common convention (+1 close), so it is only
snapped to its sign -- no flip (OpenVLA flips it to 1 = open only to match Bridge's OXE
convention, which we do not use).
"""

from __future__ import annotations

import numpy as np

from roboalign_jax.data.specs.common import (CLOSE_POSITIVE, DatasetSpec, RawEpisode, StandardEpisode, image_feature,
                                             rlds_step_features, standardize_image_wrist_state)

IMAGE_SHAPE = (256, 256, 3)
SUITES = ("libero_spatial_no_noops", "libero_object_no_noops", "libero_goal_no_noops", "libero_10_no_noops")


def features(replace=None):
  """The published features; `replace`: observation key -> feature (see rlds_step_features)."""
  import tensorflow_datasets as tfds  # lazy: heavy, needed only for its builder and feature classes
  observation = {
      "image": image_feature(IMAGE_SHAPE),
      "wrist_image": image_feature(IMAGE_SHAPE),
      "state": tfds.features.Tensor(shape=(8,), dtype=np.float32),
      "joint_state": tfds.features.Tensor(shape=(7,), dtype=np.float32),
  }
  step = rlds_step_features(observation, tfds.features.Tensor(shape=(7,), dtype=np.float32),
                            extra={"language_instruction": tfds.features.Text()}, replace=replace)
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset(step),
      "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()})})


def to_dataset_orientation(image: np.ndarray) -> np.ndarray:
  """A live simulator camera frame [H, W, 3] -> the orientation the dataset stores (180 degrees)."""
  return np.ascontiguousarray(image[::-1, ::-1])


def standardize(raw: RawEpisode) -> StandardEpisode:
  # LIBERO already uses +1 close / -1 open; snap to the sign.
  return standardize_image_wrist_state(raw, CLOSE_POSITIVE)


SPEC = DatasetSpec(
    name="libero", builder_name="libero_spatial_no_noops", features=features,
    cameras={"primary": ("observation/image", IMAGE_SHAPE), "wrist": ("observation/wrist_image", IMAGE_SHAPE)},
    state_dim=8, required=("observation/image", "observation/wrist_image", "observation/state", "action",
                           "language_instruction"),
    standardize=standardize, gripper=CLOSE_POSITIVE, description=__doc__)
