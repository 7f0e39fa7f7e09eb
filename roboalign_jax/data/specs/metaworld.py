"""Meta-World v3 demonstrations as recorded by `launch/record_metaworld.py` (Meta-World's own
scripted experts on the real simulator; dataset `metaworld_scripted`).

  steps/observation/image        uint8 [128, 128, 3] jpeg, the `corner` camera rotated 180 degrees
                                 (upright; MuJoCo renders that camera upside down)
  steps/observation/wrist_image  uint8 [128, 128, 3] jpeg, the `gripperPOV` camera
  steps/observation/state        float32 [4]  proprio only: hand xyz (m), gripper opening (obs[:4])
  steps/observation/env_state    float32 [39] Meta-World's full observation (objects, previous
                                 step, goal), for analysis; no policy reads it
  steps/action                   float32 [4]  xyz mocap delta in [-1, 1], gripper effort
                                              +1 close / -1 open (already snapped: executed as stored)
  steps/language_instruction     text, one short instruction per task
  episode_metadata               file_path, task (e.g. "drawer-open-v3"), seed (the trial's variant)
No step is dropped: the experts' still steps wait for the gripper to close.

The state is proprio only, as on a real robot: a policy must see the objects (and the goal
markers Meta-World renders) in the image.

Standardisation: the 4-D action goes to the common 7-D layout: xyz at 0-2, rotation (3-5) zero,
the gripper at 6 mapped with EFFORT (> 0 close -> +1, else -1; the recorder already snapped it, so
this only guards other data). A policy's 7-D output maps back to the env with dims [0, 1, 2, 6]
(eval/metaworld/env.py `from_common`). The always-zero rotation dims normalise to 0 and
unnormalise back to 0 (normalization.normalize: a constant dimension maps to 0).
"""

from __future__ import annotations

import numpy as np

from roboalign_jax.data.errors import DataError
from roboalign_jax.data.specs.common import (ACTION_DIM, GRIPPER_DIM, DatasetSpec, GripperConvention, RawEpisode,
                                             StandardEpisode, image_feature, instruction_of, require_finite,
                                             rlds_step_features, snap_to_sign)

IMAGE_SHAPE = (128, 128, 3)
STATE_DIM = 4
ENV_STATE_DIM = 39
RAW_ACTION_DIM = 4
# Where Meta-World's xyz and gripper go in the common layout (and come back from).
COMMON_DIMS = (0, 1, 2, GRIPPER_DIM)
DATASET_NAME = "metaworld_scripted"


def snap_effort(effort: np.ndarray) -> np.ndarray:
  """Meta-World gripper effort -> {-1, +1}: +1 (close) where > 0, else -1 (open). The scripted
  experts emit -1, 0 ("not grasping"), 0.1, 0.6, 0.8 and 1. float [...] -> float32 [...]."""
  return np.where(np.asarray(effort, np.float64) > 0, 1.0, -1.0).astype(np.float32)


# Meta-World: +1 close / -1 open, but 0 means open (an expert's "not grasping"); the model's
# common-convention output maps back by its sign, as for every other layout.
EFFORT = GripperConvention("effort", to_common=snap_effort, from_common=snap_to_sign)


def features(replace=None):
  """The recorded features; `replace`: observation key -> feature (see rlds_step_features)."""
  import tensorflow_datasets as tfds  # lazy: heavy, needed only for its builder and feature classes
  observation = {
      "image": image_feature(IMAGE_SHAPE),
      "wrist_image": image_feature(IMAGE_SHAPE),
      "state": tfds.features.Tensor(shape=(STATE_DIM,), dtype=np.float32),
      "env_state": tfds.features.Tensor(shape=(ENV_STATE_DIM,), dtype=np.float32),
  }
  step = rlds_step_features(observation, tfds.features.Tensor(shape=(RAW_ACTION_DIM,), dtype=np.float32),
                            extra={"language_instruction": tfds.features.Text()}, replace=replace)
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset(step),
      "episode_metadata": tfds.features.FeaturesDict({
          "file_path": tfds.features.Text(), "task": tfds.features.Text(),
          "seed": tfds.features.Scalar(dtype=np.int32)})})


def to_common_actions(actions: np.ndarray) -> np.ndarray:
  """float [T, 4] Meta-World actions -> float32 [T, 7]: xyz, zero rotation, gripper snapped."""
  actions = np.asarray(actions, np.float32)
  if actions.ndim != 2 or actions.shape[1] != RAW_ACTION_DIM:
    raise ValueError(f"actions have shape {actions.shape}; expected [T, {RAW_ACTION_DIM}] (xyz delta, gripper effort)")
  out = np.zeros((len(actions), ACTION_DIM), np.float32)
  out[:, :3] = actions[:, :3]
  out[:, GRIPPER_DIM] = EFFORT.standardize_episode(actions[:, 3])
  return out


def standardize(raw: RawEpisode) -> StandardEpisode:
  actions = raw.fields["action"].astype(np.float32)
  states = raw.fields["observation/state"].astype(np.float32)
  if actions.ndim != 2 or actions.shape[1] != RAW_ACTION_DIM:
    raise DataError(f"action is {actions.shape[1:]} per step; expected ({RAW_ACTION_DIM},) (xyz delta, gripper "
                    "effort) as recorded for metaworld", dataset=raw.dataset, episode=raw.index)
  require_finite(raw, "action", actions)
  require_finite(raw, "observation/state", states)
  return StandardEpisode(
      dataset=raw.dataset, episode=raw.index, actions=to_common_actions(actions), states=states,
      instruction=instruction_of(raw, "language_instruction"),
      images={"primary": raw.images["observation/image"], "wrist": raw.images["observation/wrist_image"]},
      step_ids=np.arange(len(actions), dtype=np.int32))


SPEC = DatasetSpec(
    name="metaworld", builder_name=DATASET_NAME, features=features,
    cameras={"primary": ("observation/image", IMAGE_SHAPE), "wrist": ("observation/wrist_image", IMAGE_SHAPE)},
    state_dim=STATE_DIM, required=("observation/image", "observation/wrist_image", "observation/state", "action",
                                   "language_instruction"),
    standardize=standardize, gripper=EFFORT, description=__doc__)
