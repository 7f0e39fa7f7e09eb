"""CALVIN in the community RLDS layout (converted from the ABC/D task splits).

  steps/observation/image        uint8 [200, 200, 3] jpeg, from `rgb_static`
  steps/observation/wrist_image  uint8 [84, 84, 3] jpeg, from `rgb_gripper`
  steps/observation/state        float32 [15] = `robot_obs`: tcp position (3), tcp euler (3),
                                 gripper width (1), joint angles (7), gripper action (1)
  steps/action                   float32 [7] = `rel_actions`: xyz x50 and euler x20, clipped to
                                 [-1, 1], gripper +1 open / -1 close
  steps/language_instruction     text (the language annotation of the window)

Standardisation: the gripper is negated into the common convention (+1 close).
"""

from __future__ import annotations

import numpy as np

from roboalign_jax.data.specs.common import (OPEN_POSITIVE, DatasetSpec, RawEpisode, StandardEpisode, image_feature,
                                             rlds_step_features, standardize_image_wrist_state)

STATIC_SHAPE = (200, 200, 3)
GRIPPER_SHAPE = (84, 84, 3)


def features(replace=None):
  """The published features; `replace`: observation key -> feature (see rlds_step_features)."""
  import tensorflow_datasets as tfds  # lazy: heavy, needed only for its builder and feature classes
  observation = {
      "image": image_feature(STATIC_SHAPE),
      "wrist_image": image_feature(GRIPPER_SHAPE),
      "state": tfds.features.Tensor(shape=(15,), dtype=np.float32),
  }
  step = rlds_step_features(observation, tfds.features.Tensor(shape=(7,), dtype=np.float32),
                            extra={"language_instruction": tfds.features.Text()}, replace=replace)
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset(step),
      "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()})})


def standardize(raw: RawEpisode) -> StandardEpisode:
  # CALVIN: +1 open -> common -1 open.
  return standardize_image_wrist_state(raw, OPEN_POSITIVE)


SPEC = DatasetSpec(
    name="calvin", builder_name="calvin_abc", features=features,
    cameras={"primary": ("observation/image", STATIC_SHAPE), "wrist": ("observation/wrist_image", GRIPPER_SHAPE)},
    state_dim=15, required=("observation/image", "observation/wrist_image", "observation/state", "action",
                            "language_instruction"),
    standardize=standardize, gripper=OPEN_POSITIVE, description=__doc__)
