"""A Policy: a dataset layout's transforms around a model, `infer(observation) -> {"actions"}`.

    policy = policies.load("runs/vla/policy")
    out = policy.infer({"observation/image": uint8 [H, W, 3], "observation/wrist_image": uint8 [H, W, 3],
                        "observation/state": float [8], "prompt": "put the bowl on the plate"})
    out["actions"]   # float32 [action_horizon, 7]: unnormalised, in the dataset's gripper convention

The observation goes through `LayoutTransforms.inputs()` (the request's keys validated and
renamed, images resized, state normalised and padded: the transforms the training pipeline
applied to the dataset's steps), the model maps that to a normalised action chunk, and
`LayoutTransforms.outputs` brings it back to the robot's units. A policy directory holds
`policy.json` (what kind of model, the layout, image size, cameras, horizon, the normalisation
statistics, the backbone reference) and the model's own files; `load` dispatches on its kind.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from roboalign_jax.data import normalization, transforms
from roboalign_jax.data.specs import get_spec

POLICY_FILE = "policy.json"
FORMAT_VERSION = 1
# policy.json "kind" -> "module:function" loading that kind from (directory, description).
KINDS: dict[str, str] = {
    "fast": "roboalign_jax.policies.fast_policy:load",
    "vla": "roboalign_jax.policies.vla_policy:load",
}


@dataclasses.dataclass(frozen=True)
class PolicyDescription:
  """The contents of policy.json (kind-specific entries in `extra`)."""
  kind: str
  layout: str                     # dataset spec name, e.g. "libero"
  cameras: tuple[str, ...]        # common camera names the model reads, in order
  image_size: tuple[int, int]
  state_width: int | None         # padded state width the model reads (None: not used / native)
  action_horizon: int
  statistics: normalization.DatasetStatistics
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def transforms(self) -> transforms.LayoutTransforms:
    return transforms.layout_transforms(get_spec(self.layout), self.statistics, image_size=self.image_size,
                                        cameras=self.cameras, state_width=self.state_width)

  def to_json(self) -> dict:
    return {"format_version": FORMAT_VERSION, "kind": self.kind, "layout": self.layout, "cameras": list(self.cameras),
            "image_size": list(self.image_size), "state_width": self.state_width,
            "action_horizon": self.action_horizon, "statistics": self.statistics.to_json(), **self.extra}

  @classmethod
  def from_json(cls, d: Mapping[str, Any], source: str = POLICY_FILE) -> "PolicyDescription":
    required = ("kind", "layout", "cameras", "image_size", "action_horizon", "statistics")
    missing = [k for k in required if k not in d]
    if missing:
      raise ValueError(f"{source}: missing {missing}; expected a policy description written by this package")
    if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
      raise ValueError(f"{source}: format_version {d['format_version']} is newer than this package's "
                       f"{FORMAT_VERSION}")
    known = set(required) | {"format_version", "state_width"}
    return cls(kind=d["kind"], layout=d["layout"], cameras=tuple(d["cameras"]), image_size=tuple(d["image_size"]),
               state_width=d.get("state_width"), action_horizon=int(d["action_horizon"]),
               statistics=normalization.DatasetStatistics.from_json(d["statistics"], source="policy"),
               extra={k: v for k, v in d.items() if k not in known})


class Policy:
  """observation -> {"actions": float32 [action_horizon, 7], "policy_timing": {"infer_ms": ...}}.

  model: `(model input dict) -> normalised actions float [action_horizon, D >= 7]`, where the
  model input holds "image/<camera>" uint8 [H, W, 3], "state" float32 [state_width] and
  "instruction" str (the outputs of `description.transforms().inputs()`). A model may also have
  `batch(list of model inputs) -> [B, action_horizon, D]`, which `infer_batch` then uses.
  """

  def __init__(self, description: PolicyDescription, model: Callable[[dict], np.ndarray]):
    self.description = description
    self.transforms = description.transforms()
    self._inputs = self.transforms.inputs()
    self._model = model

  @property
  def metadata(self) -> dict[str, Any]:
    """What a server sends a client first (openpi sends the policy's metadata on connect)."""
    d = self.description
    return {"kind": d.kind, "layout": d.layout, "action_horizon": d.action_horizon, "action_dim": 7,
            "cameras": list(d.cameras), "image_size": list(d.image_size)}

  def infer(self, observation: Mapping[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    actions = self._outputs(self._model(self._inputs(observation)))
    return {"actions": actions, "policy_timing": {"infer_ms": (time.perf_counter() - started) * 1e3}}

  def infer_batch(self, observations: Sequence[Mapping[str, Any]], *,
                  return_errors: bool = False) -> list[dict[str, Any] | Exception]:
    """`infer` of each observation, with one batched forward when the model has a
    `batch(list of model inputs) -> [B, action_horizon, D]` method (else one call each).

    A bad observation raises its KeyError/ValueError/TypeError (the batch is not run), or with
    `return_errors` takes that exception's place in the result list while the others are
    answered (a server then refuses only the request that was bad). `policy_timing.infer_ms` is
    the whole batch's time; the results equal `infer` of each observation in order, up to float
    rounding of the batched forward (a model that draws noise per call draws it in list order).
    """
    started = time.perf_counter()
    results: list[Any] = [None] * len(observations)
    good, inputs = [], []
    for i, observation in enumerate(observations):
      try:
        inputs.append(self._inputs(observation))
        good.append(i)
      except (KeyError, ValueError, TypeError) as error:
        if not return_errors:
          raise
        results[i] = error
    batched = getattr(self._model, "batch", None)
    if batched is not None and len(inputs) > 1:
      chunks = list(np.asarray(batched(inputs)))
    else:
      chunks = [self._model(x) for x in inputs]
    timing = {"infer_ms": (time.perf_counter() - started) * 1e3}
    for i, chunk in zip(good, chunks):
      results[i] = {"actions": self._outputs(chunk), "policy_timing": dict(timing)}
    return results

  def example_observation(self) -> dict[str, Any]:
    """A valid request of this policy's layout (black images at the published size, zero state)."""
    spec, request = get_spec(self.description.layout), self.transforms.request
    out: dict[str, Any] = {key: np.zeros(spec.cameras[camera][1], np.uint8) for key, camera in request.cameras}
    out[request.state_key] = np.zeros(request.state_width, np.float32)
    out[request.prompt_key] = "warm up"
    return out

  def warmup(self, max_batch: int = 1) -> None:
    """Runs every shape that serving up to `max_batch` requests at a time compiles (batch sizes
    1, 2, 4, ... when the model batches), so the first clients do not wait for compilation. The
    model's call counter (VLA noise numbering) is restored: answers stay those of a fresh policy."""
    calls = getattr(self._model, "calls", None)
    example = self.example_observation()
    sizes = [1]
    if getattr(self._model, "batch", None) is not None:
      while sizes[-1] < max_batch:
        sizes.append(sizes[-1] * 2)
    for size in sizes:
      self.infer_batch([example] * size)
    if calls is not None:
      self._model.calls = calls

  def _outputs(self, model_output) -> np.ndarray:
    """A model's normalised chunk -> the robot's actions float32 [action_horizon, 7]."""
    normalised = np.asarray(model_output, np.float32)
    expected = self.description.action_horizon
    if normalised.ndim != 2 or normalised.shape[0] != expected:
      raise RuntimeError(f"the {self.description.kind} model returned actions of shape {normalised.shape}; "
                         f"expected [{expected}, D]")
    return self.transforms.outputs({"actions": normalised})["actions"]


def write_description(policy_dir: str, description: PolicyDescription) -> str:
  os.makedirs(policy_dir, exist_ok=True)
  path = os.path.join(policy_dir, POLICY_FILE)
  with open(path, "w") as f:
    json.dump(description.to_json(), f, indent=1)
  return path


def read_description(policy_dir: str) -> PolicyDescription:
  path = os.path.join(policy_dir, POLICY_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{policy_dir!r} has no {POLICY_FILE}; expected a policy directory written by a "
                            "trainer (e.g. <workdir>/policy of a vla run)")
  with open(path) as f:
    try:
      d = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f"{path}: not valid JSON ({error})") from None
  return PolicyDescription.from_json(d, path)


def load(policy_dir: str, **kwargs: Any) -> Policy:
  """The policy saved in `policy_dir` (its kind decides how the model is rebuilt)."""
  description = read_description(policy_dir)
  if description.kind not in KINDS:
    raise ValueError(f"{policy_dir}/{POLICY_FILE}: unknown policy kind {description.kind!r}; known: {sorted(KINDS)}")
  module, function = KINDS[description.kind].split(":")
  return getattr(importlib.import_module(module), function)(policy_dir, description, **kwargs)
