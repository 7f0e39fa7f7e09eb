"""The Stage 3 policy: the frozen backbone's layer-L features of (cameras, instruction) and the
flow-matching head sampling a normalised action chunk, inside the layout's transforms.

A policy directory written by the VLA stage (`save`):

    policy.json   kind "vla", layout, cameras, image size, state width, action horizon, the
                  normalisation statistics, and: backbone {family, dir, sha256}, feature_layer,
                  embodiment_id, max_seq_len, mask_padding, system_prompt, compute_dtype, seed
    head/         the head in GR00T N1.5's layout (config.json with action_head_cfg + safetensors;
                  GR00T tooling loads it, `action_head.load_gr00t` reads it back)
    processor/    tokenizer (with the action tokens), image processor and chat template
    backbone/     the backbone checkpoint itself, only when saved with copy_backbone

`load` rebuilds it; the backbone comes from `backbone.dir` (relative paths are inside the policy
directory) and must have the recorded content hash. One compiled shape serves every request
(prompts padded to max_seq_len, images resized to the training size); the Euler start noise is
drawn from `fold_in(key(seed), call number)`, so a policy is deterministic given its seed; a
batched call (`Policy.infer_batch`) numbers its requests in list order, so it draws the same noise
as that many single calls (results agree up to float rounding of the batched forward).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from roboalign_jax.data.samples import SYSTEM_PROMPT, Tokenizing, vla_messages
from roboalign_jax.models import action_head
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.policies.policy import Policy, PolicyDescription, write_description

HEAD_DIR, PROCESSOR_DIR, BACKBONE_DIR = "head", "processor", "backbone"


def vla_features(backbone_model, backbone_params, batch, *, layer: int, frame_patches: int | None):
  """Frozen layer-`layer` features of a batch-major model batch (input_ids / attention_mask
  [B, T], pixel_values [B, n*P, d], image_grid_thw [B, n, 3]): float [B, T, hidden], no gradient."""
  pixels, grid = batch["pixel_values"], batch["image_grid_thw"]
  out = backbone_lib.layer_features(backbone_model, backbone_params, batch["input_ids"], batch["attention_mask"],
                                    pixels.reshape(-1, pixels.shape[-1]), grid.reshape(-1, 3), layer=layer,
                                    frame_patches=frame_patches)
  return jax.lax.stop_gradient(out)


def predict_actions(backbone_model, head, backbone_params, head_params, batch, noise, *, layer: int,
                    frame_patches: int | None, embodiment_id: int, mask_padding: bool):
  """Normalised action chunks float32 [B, horizon, action_dim] from Euler steps starting at `noise`."""
  vl = vla_features(backbone_model, backbone_params, batch, layer=layer, frame_patches=frame_patches)
  b = vl.shape[0]
  vl_mask = batch["attention_mask"].astype(bool) if mask_padding else None
  return action_head.sample(head, head_params, vl.astype(jnp.float32), batch["state"][:, None, :],
                            jnp.full((b,), embodiment_id, jnp.int32), noise=noise, vl_mask=vl_mask)


def frame_patches_of(grid: np.ndarray) -> int | None:
  """h*w when every image shares its grid (the vision tower then attends per image)."""
  grid = np.asarray(grid).reshape(-1, 3)
  hw = grid[:, 1] * grid[:, 2]
  return int(hw[0]) if len(grid) and bool(np.all(hw == hw[0]) and np.all(grid[:, 0] == 1)) else None


@functools.partial(jax.jit, static_argnums=2)
def start_noise(key: jax.Array, calls: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Euler start noise float32 [len(calls), *shape]: call n draws normal(fold_in(key, n)), so a
  batch of k requests gets exactly the noise of k single calls in the same order (one compiled
  function per batch size)."""
  return jax.vmap(lambda n: jax.random.normal(jax.random.fold_in(key, n), shape, jnp.float32))(calls)


@dataclasses.dataclass
class VLAModel:
  """Model input (see `Policy`) -> normalised chunk float32 [action_horizon, action_dim]."""
  backbone: backbone_lib.Backbone
  backbone_params: Any
  head: action_head.FlowMatchingHead
  head_params: Any
  tokenizing: Tokenizing
  cameras: Sequence[str]
  feature_layer: int
  embodiment_id: int
  mask_padding: bool
  system: str = SYSTEM_PROMPT
  seed: int = 0
  calls: int = 0

  def __post_init__(self):
    self._predict = jax.jit(functools.partial(predict_actions, self.backbone.model, self.head),
                            static_argnames=("layer", "frame_patches", "embodiment_id", "mask_padding"))

  def model_batch(self, inputs: dict | Sequence[dict]) -> dict[str, np.ndarray]:
    """The batch-major model batch of one model input or a list of them."""
    many = [inputs] if isinstance(inputs, dict) else list(inputs)
    prompts = []
    for one in many:
      images = [one[f"image/{c}"] for c in self.cameras]
      prompts.append(self.tokenizing.prompt(vla_messages(images, one["instruction"], system=self.system), images))
    tokens = self.tokenizing.collate_tokens(prompts, left=True)
    b, pixels = len(many), tokens["pixel_values"]
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
            "pixel_values": pixels.reshape(b, -1, pixels.shape[-1]),
            "image_grid_thw": tokens["image_grid_thw"].reshape(b, -1, 3),
            "state": np.stack([np.asarray(one["state"], np.float32) for one in many])}

  def _noise(self, count: int) -> jax.Array:
    """Start noise [count, horizon, action_dim] of the next `count` call numbers (see `start_noise`)."""
    c = self.head.config
    noise = start_noise(jax.random.PRNGKey(self.seed), jnp.arange(self.calls, self.calls + count),
                        (c.action_horizon, c.action_dim))
    self.calls += count
    return noise

  def _run(self, batch: dict, noise) -> np.ndarray:
    actions = self._predict(self.backbone_params, self.head_params, batch, noise, layer=self.feature_layer,
                            frame_patches=frame_patches_of(batch["image_grid_thw"]),
                            embodiment_id=self.embodiment_id, mask_padding=self.mask_padding)
    return np.asarray(jax.device_get(actions))

  def __call__(self, inputs: dict) -> np.ndarray:
    return self._run(self.model_batch(inputs), self._noise(1))[0]

  def batch(self, inputs: Sequence[dict]) -> np.ndarray:
    """[B, horizon, action_dim] in one forward. B is padded up to a power of two (repeating the
    last input; the padding rows' noise is that of the next call numbers, discarded and not
    counted) so a server compiles log2(max batch) shapes, not one per batch size."""
    b = len(inputs)
    padded = 1 << max(b - 1, 0).bit_length()
    noise = self._noise(padded)
    self.calls -= padded - b
    inputs = list(inputs) + [inputs[-1]] * (padded - b)
    return self._run(self.model_batch(inputs), noise)[:b]


def save(policy_dir: str, *, head_params, head_config: action_head.ActionHeadConfig, backbone: backbone_lib.Backbone,
         backbone_hash: str, layout: str, statistics, cameras: Sequence[str], image_size: Sequence[int],
         state_width: int, feature_layer: int, embodiment_id: int, max_seq_len: int, mask_padding: bool,
         system_prompt: str = "", compute_dtype: str = "", seed: int = 0, copy_backbone: bool = False) -> str:
  """Writes a policy directory (see the module docstring). Returns `policy_dir`."""
  os.makedirs(policy_dir, exist_ok=True)
  action_head.export_gr00t(head_params, head_config, os.path.join(policy_dir, HEAD_DIR))
  backbone.save_processor(os.path.join(policy_dir, PROCESSOR_DIR))
  backbone_dir = backbone.source_dir
  if copy_backbone:
    target = os.path.join(policy_dir, BACKBONE_DIR)
    if os.path.isdir(target):
      shutil.rmtree(target)
    shutil.copytree(backbone.source_dir, target)
    backbone_dir = BACKBONE_DIR
  description = PolicyDescription(
      kind="vla", layout=layout, cameras=tuple(cameras), image_size=tuple(image_size), state_width=int(state_width),
      action_horizon=int(head_config.action_horizon), statistics=statistics,
      extra={"backbone": {"family": backbone.family.name, "dir": backbone_dir, "sha256": backbone_hash},
             "feature_layer": int(feature_layer), "embodiment_id": int(embodiment_id), "max_seq_len": int(max_seq_len),
             "mask_padding": bool(mask_padding), "system_prompt": system_prompt or SYSTEM_PROMPT,
             "compute_dtype": compute_dtype, "seed": int(seed)})
  write_description(policy_dir, description)
  return policy_dir


def load(policy_dir: str, description: PolicyDescription, *, verify_backbone: bool = True, seed: int | None = None,
         backbone_dir: str | None = None) -> Policy:
  """Rebuilds the policy of `policy_dir`. `backbone_dir` overrides the recorded location (the
  content hash is still checked unless `verify_backbone=False`)."""
  extra = description.extra
  ref = extra["backbone"]
  location = backbone_dir or ref["dir"]
  if not os.path.isabs(location):
    location = os.path.join(policy_dir, location)
  if not os.path.isdir(location):
    raise FileNotFoundError(f"{policy_dir}: its backbone {location!r} is not there; pass backbone_dir= (or save the "
                            "policy with copy_backbone)")
  if verify_backbone and ref.get("sha256"):
    found = backbone_lib.content_hash(location)
    if found != ref["sha256"]:
      raise ValueError(f"{policy_dir}: the backbone at {location!r} has sha256 {found[:12]}..., but the head was "
                       f"trained on {ref['sha256'][:12]}...; point backbone_dir at that checkpoint")
  dtype = jnp.dtype(extra["compute_dtype"]) if extra.get("compute_dtype") else jnp.float32
  backbone = backbone_lib.load_dir(location, family_name=ref["family"], dtype=dtype, compute_dtype=dtype)
  head, head_params = action_head.load_gr00t(os.path.join(policy_dir, HEAD_DIR), compute_dtype=dtype)
  processor, action_vocab = backbone_lib.load_processor(ref["family"], os.path.join(policy_dir, PROCESSOR_DIR))
  tokenizing = Tokenizing(processor=processor, action_vocab=action_vocab, max_seq_len=int(extra["max_seq_len"]))
  model = VLAModel(backbone=backbone, backbone_params=backbone.params, head=head, head_params=head_params,
                   tokenizing=tokenizing, cameras=description.cameras, feature_layer=int(extra["feature_layer"]),
                   embodiment_id=int(extra["embodiment_id"]), mask_padding=bool(extra["mask_padding"]),
                   system=extra.get("system_prompt") or SYSTEM_PROMPT,
                   seed=int(extra.get("seed", 0) if seed is None else seed))
  return Policy(description, model)
