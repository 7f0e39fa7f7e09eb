"""The common step format every dataset is standardised into, and the spec record per dataset.

Gripper convention (all datasets, after standardisation): action[..., 6] in {-1, +1} with
+1 = close and -1 = open. Why: it is the convention of the LIBERO data and of the robosuite
controller the LIBERO evaluation drives (its no-op is [0, 0, 0, 0, 0, 0, -1]), so policies act
in the simulator without a flip; it is symmetric, so the gripper shares the [-1, 1] range of the
normalised dims (FAST's quantisation scale and the flow head see one range); and normalisation
leaves it untouched. Bridge (open amount in [0, 1]) is binarised and mapped; CALVIN
(+1 = open) is negated.

Action layout (7): delta xyz (3), delta roll/pitch/yaw (3), gripper (1).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from roboalign_jax.data.errors import DataError

ACTION_DIM = 7
GRIPPER_DIM = 6
GRIPPER_CLOSE, GRIPPER_OPEN = 1.0, -1.0
# Cameras of the common format: "primary" (third-person) and "wrist".
CAMERAS = ("primary", "wrist")


@dataclasses.dataclass
class RawEpisode:
  """One RLDS episode as read: non-image step fields stacked over time, images still encoded.

  fields: step path ("observation/state", "action/world_vector", ...) -> array [T, ...]
    (text fields as an object array of str).
  images: step path of a camera -> T frames: encoded images (bytes) for an Image feature, uint8
    arrays [H, W, 3] for a camera stored raw (a Tensor feature).
  """
  dataset: str
  index: int
  fields: dict[str, np.ndarray]
  images: dict[str, list[bytes]]
  metadata: dict[str, Any]

  @property
  def num_steps(self) -> int:
    if self.fields:
      return len(next(iter(self.fields.values())))
    return len(next(iter(self.images.values()))) if self.images else 0


@dataclasses.dataclass
class StandardEpisode:
  """An episode in the common format.

  actions: float32 [T, 7] (gripper in {-1, +1}, +1 = close); states: float32 [T, S] (native
  state of the dataset); images: camera in CAMERAS -> T encoded images; step_ids: int32 [T], the
  step number in the original episode (for error messages after cleaning dropped steps).
  """
  dataset: str
  episode: int
  actions: np.ndarray
  states: np.ndarray
  instruction: str
  images: dict[str, list[bytes]]
  step_ids: np.ndarray

  def __len__(self) -> int:
    return len(self.actions)


def binarize_open_amount(open_amount: np.ndarray) -> np.ndarray:
  """Continuous gripper open amount in [0, 1] -> {-1 (open), +1 (close)}.

  Values above 0.95 are open, below 0.05 closed; a value in between takes the state the gripper
  reaches next (scanning forward to the next decisive value), because intermediate readings are
  the gripper on its way there. Trailing undecided values keep the last decided state.
  float [T] -> float32 [T].
  """
  out = np.zeros(len(open_amount), np.float32)
  decided = np.where(open_amount > 0.95, GRIPPER_OPEN, np.where(open_amount < 0.05, GRIPPER_CLOSE, 0.0))
  upcoming = GRIPPER_OPEN
  for t in range(len(open_amount) - 1, -1, -1):
    if decided[t] != 0:
      upcoming = decided[t]
    out[t] = upcoming
  # Trailing undecided values: carry the last decided state forward instead.
  last_decided = np.flatnonzero(decided != 0)
  if last_decided.size:
    out[last_decided[-1] + 1:] = decided[last_decided[-1]]
  return out


def snap_to_sign(g: np.ndarray) -> np.ndarray:
  """Gripper values -> {-1, +1} (0 counts as +1)."""
  return np.where(np.asarray(g) >= 0, 1.0, -1.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class GripperConvention:
  """How a dataset (and the robot it was recorded on) encodes the gripper action, with the maps to
  and from the common convention (+1 close, -1 open).

  to_common / from_common: per step, float [...] -> float32 [...] (values of the gripper column).
  from_common snaps the model's continuous output to the dataset's discrete values.
  episode_to_common: over a whole episode's column (may look ahead, as Bridge's binarisation
  does); by default `to_common`.
  """
  name: str
  to_common: Callable[[np.ndarray], np.ndarray]
  from_common: Callable[[np.ndarray], np.ndarray]
  episode_to_common: Callable[[np.ndarray], np.ndarray] | None = None

  def standardize_episode(self, column: np.ndarray) -> np.ndarray:
    return (self.episode_to_common or self.to_common)(column)


# LIBERO (robosuite): +1 close / -1 open already; values are snapped to the sign.
CLOSE_POSITIVE = GripperConvention("close_positive", to_common=snap_to_sign, from_common=snap_to_sign)
# CALVIN: +1 open / -1 close.
OPEN_POSITIVE = GripperConvention("open_positive",
                                  to_common=lambda g: np.where(np.asarray(g) > 0, -1.0, 1.0).astype(np.float32),
                                  from_common=lambda g: -snap_to_sign(g))
# Bridge: gripper open amount in [0, 1]. Episodes are binarised looking ahead (see
# binarize_open_amount); a single step is read at 0.5; the common value maps back to 1 (open) / 0.
OPEN_AMOUNT = GripperConvention(
    "open_amount", to_common=lambda g: np.where(np.asarray(g) > 0.5, GRIPPER_OPEN, GRIPPER_CLOSE).astype(np.float32),
    from_common=lambda g: ((1.0 - snap_to_sign(g)) / 2).astype(np.float32),
    episode_to_common=lambda g: binarize_open_amount(np.clip(g, 0.0, 1.0)))


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A published RLDS layout and how to standardise it.

  name: registry name ("bridge", "libero", ...); builder_name: the TFDS dataset name the
  fixture writer uses; features: () -> tfds FeaturesDict of the published spec;
  cameras: common camera name -> (step path of the image, (H, W, 3) as published). Reading accepts
    any [H, W, 3] uint8 size (copies at other resolutions are common; frames are resized to the
    model input anyway): the size found is recorded and a different one is only a warning;
  required: step paths that must be present; standardize: RawEpisode -> StandardEpisode.
  gripper: the dataset's gripper convention (standardisation maps it to the common one; a policy
  maps its output back). version: bumped whenever standardisation changes, so cached
  index/statistics are recomputed.
  """
  name: str
  builder_name: str
  features: Callable[[], Any]
  cameras: Mapping[str, tuple[str, tuple[int, int, int]]]
  state_dim: int
  required: tuple[str, ...]
  standardize: Callable[[RawEpisode], StandardEpisode]
  gripper: GripperConvention = CLOSE_POSITIVE
  version: str = "1"
  description: str = ""


def rlds_step_features(observation: dict, action, *, extra: dict | None = None,
                       replace: Mapping[str, Any] | None = None):
  """The RLDS episode structure shared by the published specs: steps + episode_metadata.

  replace: observation key -> feature used instead of the published one (e.g. a camera at
  another size, as in a re-exported copy).
  """
  import tensorflow_datasets as tfds  # the feature classes only; reading never needs TensorFlow
  unknown = sorted(set(replace or {}) - set(observation))
  if unknown:
    raise ValueError(f"observation has no features {unknown} to replace; it has {sorted(observation)}")
  observation = {**observation, **(replace or {})}
  step = {
      "observation": tfds.features.FeaturesDict(observation),
      "action": action,
      "discount": tfds.features.Scalar(dtype=np.float32),
      "reward": tfds.features.Scalar(dtype=np.float32),
      "is_first": tfds.features.Scalar(dtype=np.bool_),
      "is_last": tfds.features.Scalar(dtype=np.bool_),
      "is_terminal": tfds.features.Scalar(dtype=np.bool_),
      **(extra or {}),
  }
  return step


def image_feature(shape: tuple, encoding: str = "jpeg"):
  """A camera feature: an encoded image ("jpeg" / "png"), or "raw" uint8 pixels (a Tensor)."""
  import tensorflow_datasets as tfds  # the feature classes only (writing fixtures / converting)
  if encoding == "raw":
    return tfds.features.Tensor(shape=tuple(shape), dtype=np.uint8)
  if encoding not in ("jpeg", "png"):
    raise ValueError(f"image encoding {encoding!r}; expected 'jpeg', 'png' or 'raw'")
  return tfds.features.Image(shape=tuple(shape), dtype=np.uint8, encoding_format=encoding)


def require_finite(raw: RawEpisode, path: str, values: np.ndarray, step_ids: np.ndarray | None = None) -> None:
  """Raises DataError at the first step whose `values` row has NaN or inf."""
  bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
  if bad.any():
    t = int(np.argmax(bad))
    step = int(step_ids[t]) if step_ids is not None else t
    raise DataError(f"{path} has a non-finite value {values[t].tolist()}; expected finite floats",
                    dataset=raw.dataset, episode=raw.index, step=step)


def instruction_of(raw: RawEpisode, path: str) -> str:
  """The episode's instruction: the text at step 0 of `path`, which must be non-empty."""
  texts = raw.fields[path]
  text = texts[0].decode() if isinstance(texts[0], bytes) else str(texts[0])
  if not text.strip():
    raise DataError(f"{path} is empty; expected a non-empty language instruction",
                    dataset=raw.dataset, episode=raw.index, step=0)
  return text.strip()


def standardize_image_wrist_state(raw: RawEpisode, gripper: GripperConvention) -> StandardEpisode:
  """Standardises the OpenVLA-style layout LIBERO and community CALVIN share (`observation/image`,
  `observation/wrist_image`, `observation/state`, `action`, `language_instruction`); `gripper`
  maps the dataset's raw gripper column to the common +1 close / -1 open convention."""
  actions = raw.fields["action"].astype(np.float32).copy()
  states = raw.fields["observation/state"].astype(np.float32)
  require_finite(raw, "action", actions)
  require_finite(raw, "observation/state", states)
  actions[:, GRIPPER_DIM] = gripper.standardize_episode(actions[:, GRIPPER_DIM])
  return StandardEpisode(
      dataset=raw.dataset, episode=raw.index, actions=actions, states=states,
      instruction=instruction_of(raw, "language_instruction"),
      images={"primary": raw.images["observation/image"], "wrist": raw.images["observation/wrist_image"]},
      step_ids=np.arange(len(actions), dtype=np.int32))
