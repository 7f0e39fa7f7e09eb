"""Per-step transforms between a dataset's (or a robot's) layout and the model's, each with its
inverse where one exists, grouped per dataset layout into inputs and outputs as openpi groups
them:

    inputs   observation (request or dataset step) -> model input   (rename keys, resize images,
                                                                      normalise + pad the state)
    outputs  model output -> robot action                            (unpad, unnormalise, gripper
                                                                      back to the dataset's convention)

The Grain pipeline (`pipeline.StepReader`) applies the same transform objects to dataset steps
that a `policies.Policy` applies to live observations, so training and serving read a step the
same way; `inverse()` gives the other direction (normalise <-> unnormalise, pad <-> unpad, gripper
in <-> out, rotate <-> rotate). A transform is a pure function of one step's dict: keys it does
not name pass through unchanged.

Common keys: "image/<camera>" (uint8 [H, W, 3], or a PIL image inside the pipeline), "state"
float [S], "actions" float [H, D], "instruction" str.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from roboalign_jax.data import image_transforms, normalization
from roboalign_jax.data.specs.common import ACTION_DIM, GRIPPER_DIM, DatasetSpec, GripperConvention

Step = dict[str, Any]


class Transform:
  """A per-step map `step -> step`; `inverse()` is the map back, or None when there is none."""

  def __call__(self, step: Step) -> Step:
    raise NotImplementedError

  def inverse(self) -> "Transform | None":
    return None


def _replace(step: Step, **values: Any) -> Step:
  return {**step, **values}


def _require(step: Step, key: str, transform: Transform) -> Any:
  if key not in step:
    raise KeyError(f"{type(transform).__name__}: the step has no {key!r}; keys: {sorted(step)}")
  return step[key]


@dataclasses.dataclass(frozen=True)
class Compose(Transform):
  """Applies `transforms` in order; the inverse applies their inverses in reverse order."""
  transforms: tuple[Transform, ...]

  def __call__(self, step: Step) -> Step:
    for transform in self.transforms:
      step = transform(step)
    return step

  def inverse(self) -> "Compose":
    inverses = []
    for transform in reversed(self.transforms):
      inverse = transform.inverse()
      if inverse is None:
        raise ValueError(f"{type(transform).__name__} has no inverse, so this composition has none")
      inverses.append(inverse)
    return Compose(tuple(inverses))


@dataclasses.dataclass(frozen=True)
class Rotate180(Transform):
  """Rotates images by 180 degrees (LIBERO's stored frames vs the simulator's); its own inverse."""
  keys: tuple[str, ...]

  def __call__(self, step: Step) -> Step:
    return _replace(step, **{k: np.ascontiguousarray(np.asarray(_require(step, k, self))[::-1, ::-1])
                             for k in self.keys})

  def inverse(self) -> "Rotate180":
    return self


@dataclasses.dataclass(frozen=True)
class ResizeImages(Transform):
  """Bilinear resize of images (uint8 [H, W, 3] or PIL) to `size` = (H, W) -> uint8 [H, W, 3].

  `pad`: keep the aspect ratio and pad with black to `size` (openpi's resize_with_pad) instead
  of stretching. No inverse (resampling loses information).
  """
  keys: tuple[str, ...]
  size: tuple[int, int]
  pad: bool = False

  def __call__(self, step: Step) -> Step:
    return _replace(step, **{k: self.resize(_require(step, k, self)) for k in self.keys})

  def resize(self, image: Any) -> np.ndarray:
    if not isinstance(image, Image.Image):
      image = Image.fromarray(np.asarray(image, np.uint8))
    if not self.pad:
      return image_transforms.resize(image, self.size)
    h, w = self.size
    scale = min(h / image.height, w / image.width)
    inner = (max(1, round(image.height * scale)), max(1, round(image.width * scale)))
    out = np.zeros((h, w, 3), np.uint8)
    top, left = (h - inner[0]) // 2, (w - inner[1]) // 2
    out[top:top + inner[0], left:left + inner[1]] = image_transforms.resize(image, inner)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Normalize(Transform):
  """q01/q99 -> [-1, 1] on the last axis of `step[key]`, clipped, on the `mask` dims only
  (`normalization.normalize`); inverse: Unnormalize."""
  key: str
  stats: normalization.Stats
  mask: tuple[bool, ...] | None = None

  def __call__(self, step: Step) -> Step:
    mask = None if self.mask is None else np.asarray(self.mask)
    return _replace(step, **{self.key: normalization.normalize(_require(step, self.key, self), self.stats, mask)})

  def inverse(self) -> "Unnormalize":
    return Unnormalize(self.key, self.stats, self.mask)


@dataclasses.dataclass(frozen=True, eq=False)
class Unnormalize(Transform):
  """[-1, 1] -> the dataset's units on the `mask` dims; inverse: Normalize. Model outputs are
  clipped to [-1, 1] first (the range of every training target, gripper included)."""
  key: str
  stats: normalization.Stats
  mask: tuple[bool, ...] | None = None

  def __call__(self, step: Step) -> Step:
    mask = None if self.mask is None else np.asarray(self.mask)
    values = np.clip(np.asarray(_require(step, self.key, self), np.float32), -1.0, 1.0)
    return _replace(step, **{self.key: normalization.unnormalize(values, self.stats, mask)})

  def inverse(self) -> Normalize:
    return Normalize(self.key, self.stats, self.mask)


@dataclasses.dataclass(frozen=True)
class PadWidth(Transform):
  """Zero-pads the last axis of `step[key]` from `width` to `padded` (state to 64, actions to 32);
  inverse: TakeWidth. With `mask_key`, also writes bool [padded], True on the real dims."""
  key: str
  width: int
  padded: int
  mask_key: str | None = None

  def __call__(self, step: Step) -> Step:
    values = np.asarray(_require(step, self.key, self), np.float32)
    if values.shape[-1] != self.width:
      raise ValueError(f"{self.key} has width {values.shape[-1]} (shape {values.shape}); expected {self.width}")
    if self.width > self.padded:
      raise ValueError(f"{self.key} width {self.width} exceeds the padded width {self.padded}")
    out = np.zeros((*values.shape[:-1], self.padded), np.float32)
    out[..., :self.width] = values
    extra = {self.mask_key: np.arange(self.padded) < self.width} if self.mask_key else {}
    return _replace(step, **{self.key: out}, **extra)

  def inverse(self) -> "TakeWidth":
    return TakeWidth(self.key, self.width)


@dataclasses.dataclass(frozen=True)
class TakeWidth(Transform):
  """The first `width` entries of the last axis of `step[key]` (drops padding dims)."""
  key: str
  width: int

  def __call__(self, step: Step) -> Step:
    values = np.asarray(_require(step, self.key, self))
    if values.shape[-1] < self.width:
      raise ValueError(f"{self.key} has width {values.shape[-1]}; expected at least {self.width}")
    return _replace(step, **{self.key: values[..., :self.width]})

  def inverse(self) -> None:
    return None  # the padded width is not known here; PadWidth.inverse() is the way back


@dataclasses.dataclass(frozen=True)
class GripperFromCommon(Transform):
  """The common gripper convention (+1 close, -1 open) -> the dataset's, on column 6 of
  `step[key]` [..., 7]; inverse: GripperToCommon."""
  key: str
  convention: GripperConvention

  def __call__(self, step: Step) -> Step:
    values = np.array(_require(step, self.key, self), np.float32)
    values[..., GRIPPER_DIM] = self.convention.from_common(values[..., GRIPPER_DIM])
    return _replace(step, **{self.key: values})

  def inverse(self) -> "GripperToCommon":
    return GripperToCommon(self.key, self.convention)


@dataclasses.dataclass(frozen=True)
class GripperToCommon(Transform):
  """The dataset's gripper convention -> the common one, one step at a time (whole episodes are
  standardised with `GripperConvention.standardize_episode`, which may look ahead)."""
  key: str
  convention: GripperConvention

  def __call__(self, step: Step) -> Step:
    values = np.array(_require(step, self.key, self), np.float32)
    values[..., GRIPPER_DIM] = self.convention.to_common(values[..., GRIPPER_DIM])
    return _replace(step, **{self.key: values})

  def inverse(self) -> GripperFromCommon:
    return GripperFromCommon(self.key, self.convention)


# ---- groups per dataset layout -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RequestInputs(Transform):
  """A serving request in a layout's key names -> common keys, validated.

  cameras: (request key, camera) pairs, e.g. ("observation/image", "primary"); state_key and
  state_width: the state entry and its width; prompt_key: the instruction.
  """
  cameras: tuple[tuple[str, str], ...]
  state_key: str
  state_width: int
  prompt_key: str = "prompt"
  # A robot instruction is a sentence; a longer "prompt" is a mistake or an attack (each new prompt
  # length a FAST policy sees compiles a new shape on the server's one inference thread).
  max_prompt_chars: int = 1000

  def __call__(self, request: Step) -> Step:
    if not isinstance(request, Mapping):
      raise TypeError(f"observation must be a dict, got {type(request).__name__}")
    out = {}
    for key, camera in self.cameras:
      if key not in request:
        raise KeyError(f"observation has no {key!r} ({camera} camera); expected uint8 [H, W, 3]; keys: "
                       f"{sorted(request)}")
      image = np.asarray(request[key])
      if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
        raise ValueError(f"observation[{key!r}] is {image.dtype} {image.shape}; expected uint8 [H, W, 3] with "
                         "H, W >= 1")
      out[f"image/{camera}"] = image
    if self.state_key not in request:
      raise KeyError(f"observation has no {self.state_key!r}; expected float [{self.state_width}]; keys: "
                     f"{sorted(request)}")
    state = np.asarray(request[self.state_key])
    if state.shape != (self.state_width,) or state.dtype.kind not in "fiu":  # not bool, complex or timedelta
      raise ValueError(f"observation[{self.state_key!r}] is {state.dtype} {state.shape}; expected float "
                       f"[{self.state_width}]")
    if not np.isfinite(state).all():
      raise ValueError(f"observation[{self.state_key!r}] has non-finite values {state.tolist()}")
    prompt = request.get(self.prompt_key)
    if not isinstance(prompt, str) or not prompt.strip():
      raise ValueError(f"observation[{self.prompt_key!r}] is {prompt!r}; expected a non-empty instruction string")
    if len(prompt) > self.max_prompt_chars:
      raise ValueError(f"observation[{self.prompt_key!r}] has {len(prompt)} characters; expected an instruction of "
                       f"at most {self.max_prompt_chars}")
    out["state"] = state.astype(np.float32)
    out["instruction"] = prompt.strip()
    return out


@dataclasses.dataclass(frozen=True)
class LayoutTransforms:
  """The transforms of one dataset layout with its statistics.

  request: a serving request in the layout's key names (the dataset's own step paths plus
    "prompt": LIBERO's `observation/image`, `observation/wrist_image`, `observation/state`) ->
    common keys; images: resize of every camera the model reads (the training pipeline augments
    third-person views instead); state / actions: normalisation (and the state's zero padding);
  outputs: the model's normalised, possibly padded actions -> the dataset's units and gripper
    convention, [H, 7].
  """
  spec_name: str
  request: RequestInputs
  images: ResizeImages
  state: Compose
  actions: Compose
  outputs: Compose

  def inputs(self) -> Compose:
    """Request -> model input: keys, image resize, state normalisation and padding."""
    return Compose((self.request, self.images, self.state))


def layout_transforms(spec: DatasetSpec, stats: normalization.DatasetStatistics, *, image_size: Sequence[int],
                      cameras: Sequence[str], state_width: int | None = None) -> LayoutTransforms:
  """The transforms of `spec`'s layout with `stats`.

  image_size: model input (H, W); cameras: the common camera names the model reads, in order
  (each must be one of the spec's); state_width: the padded state width (None = the dataset's).
  """
  unknown = [c for c in cameras if c not in spec.cameras]
  if unknown:
    raise ValueError(f"cameras {unknown} are not in dataset layout {spec.name!r} (it has {sorted(spec.cameras)})")
  state = [Normalize("state", stats.state)]
  if state_width is not None and state_width != spec.state_dim:
    state.append(PadWidth("state", spec.state_dim, state_width))
  normalize_actions = action_normalizer(stats.action)
  outputs = (TakeWidth("actions", ACTION_DIM), normalize_actions.inverse(), GripperFromCommon("actions", spec.gripper))
  request = RequestInputs(tuple((spec.cameras[c][0], c) for c in cameras), STATE_KEY, spec.state_dim)
  return LayoutTransforms(spec.name, request, ResizeImages(tuple(f"image/{c}" for c in cameras), tuple(image_size)),
                          Compose(tuple(state)), Compose((normalize_actions,)), Compose(outputs))


def action_normalizer(stats: normalization.Stats) -> Normalize:
  """Normalisation of 7-D actions: every dimension but the gripper (already in {-1, +1})."""
  return Normalize("actions", stats, tuple(bool(m) for m in normalization.action_mask(ACTION_DIM)))


# Every published layout stores the robot state here (and a request sends it under this key).
STATE_KEY = "observation/state"
