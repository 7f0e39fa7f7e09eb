"""Stage 3 trainer: a newly initialised GR00T-N1.5 flow-matching head on a frozen backbone's hidden
states (RoboAlign A.2: layer 18 of Qwen2.5-VL-7B), trained per benchmark.

    python launch/train.py --config=configs/vla.py:libero,backbone=runs/grpo/hf,data=/data/libero_spatial_no_noops/1.0.0 \
        --workdir=runs/vla_grpo

One step = one batch of VLA samples (`data.sample = "vla"`: every camera and the instruction in the
backbone prompt, state normalised and padded to `data.max_state_dim`, normalised actions padded to
`data.max_action_dim` with a mask, `data.action_horizon` steps). The frozen backbone computes the
hidden states after layer `vla.feature_layer` -- only the layers up to it -- and the head is
trained with GR00T's flow-matching loss (models/action_head/flow.py).

The backbone is not in the train state: it is neither optimised nor written into checkpoints.
Its path and content hash go into the checkpoint metadata, and a resumed run refuses a different
backbone. This is how the paper compares backbones: the same stage on the base model, the SFT
model and the SFT+RL model (`backbone=DIR`). At the end the stage writes a servable policy
directory (policies/vla_policy.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from roboalign_jax.data.pipeline import (dataset_statistics, default_cache_dir, make_dataset, open_datasets,
                                         open_heldout_datasets)
from roboalign_jax.models import action_head
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.parallel import mesh as mesh_lib
from roboalign_jax.parallel import partitioned
from roboalign_jax.parallel import sharding as sharding_lib
from roboalign_jax.policies import vla_policy
from roboalign_jax.train import evaluators, feature_cache, loop
from roboalign_jax.train.optimizer import make_optimizer
from roboalign_jax.train.train_state import TrainState, apply_gradients

log = logging.getLogger(__name__)

# Arrays of a VLA batch the step reads (strings, raw images and bookkeeping stay on the host).
MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "state", "actions", "action_mask")


# ---- configuration resolved against the backbone --------------------------------------------------
def feature_layer(config: ml_collections.ConfigDict, backbone: backbone_lib.Backbone) -> int:
  """`vla.feature_layer`, or 0 = the paper's depth: layer 18 of 28 scaled to the backbone
  (18 for Qwen2.5-VL-7B, 23 for the 36-layer 3B, 3 for the 4-layer tiny model)."""
  return backbone_lib.feature_layer(backbone.num_layers, config.vla.feature_layer, name="config.vla.feature_layer")


def head_config(config: ml_collections.ConfigDict, backbone: backbone_lib.Backbone) -> action_head.ActionHeadConfig:
  """The head's shapes: `head.variant` with the data's horizon and padded widths; a projection in
  front of the head when the backbone is wider than the head's VL width (GR00T's own mechanism,
  `project_to_dim`): Qwen2.5-VL-7B (3584) into the N1.5 head (2048)."""
  d, h = config.data, config.head
  # GR00T's 32 embodiment slots whatever the variant, so `vla.embodiment_id` (31) always exists.
  overrides = dict(action_horizon=int(d.action_horizon), action_dim=int(d.max_action_dim),
                   max_state_dim=int(d.max_state_dim), max_num_embodiments=32,
                   dtype=_dtype(config.model.compute_dtype) or jnp.float32)
  if h.num_inference_timesteps:
    overrides["num_inference_timesteps"] = int(h.num_inference_timesteps)
  base = action_head.config_from_variant(h.variant, **overrides)
  width = backbone.hidden_size
  return base.replace(backbone_feature_dim=None if width == base.backbone_embedding_dim else width)


def _dtype(name: str):
  return jnp.dtype(name) if name else None


def check_config(config: ml_collections.ConfigDict) -> None:
  if not config.model.init_dir:
    raise ValueError("config.model.init_dir is empty; expected the backbone to read features from: a base HF "
                     "checkpoint or a Stage 1/2 export (configs/vla.py:VARIANT,backbone=DIR)")
  if not config.data.datasets:
    raise ValueError("config.data.datasets is empty; expected a robot dataset (configs/vla.py:VARIANT,data=DIR)")
  if config.data.sample != "vla":
    raise ValueError(f"config.data.sample={config.data.sample!r}; the VLA stage needs 'vla' samples")
  if config.data.max_seq_len <= 0:
    raise ValueError("config.data.max_seq_len must be > 0: prompts are padded to it so every batch (and the "
                     "served policy) has one compiled shape")
  if not 0 <= config.vla.embodiment_id < 32:
    raise ValueError(f"config.vla.embodiment_id={config.vla.embodiment_id}; expected one of GR00T's 32 slots "
                     "(31 = a new embodiment)")


# ---- batches -------------------------------------------------------------------------------------
def model_batch(batch: dict[str, Any]) -> dict[str, np.ndarray]:
  """A pipeline VLA batch (this process's B rows) -> the step's arrays, batch-major:
  input_ids / attention_mask int32 [B, T], pixel_values float32 [B, n*P, patch_dim] (n images of
  P patches per sample), image_grid_thw int32 [B, n, 3], state [B, S], actions / action_mask [B, H, D]."""
  missing = [k for k in MODEL_KEYS if k not in batch]
  if missing:
    raise ValueError(f"VLA batch lacks {missing}; expected tokenised VLA samples (config.data.sample='vla' with "
                     "config.data.processor_dir set)")
  b = batch["input_ids"].shape[0]
  grid = np.asarray(batch["image_grid_thw"], np.int32)
  if len(grid) % b or not (grid == grid[:1]).all():
    raise ValueError(f"VLA batch of {b} samples has {len(grid)} images with grids "
                     f"{np.unique(grid, axis=0).tolist()}; every sample needs the same cameras at one size "
                     "(config.data.image_size)")
  pixels = np.asarray(batch["pixel_values"], np.float32)
  return {"input_ids": np.asarray(batch["input_ids"], np.int32),
          "attention_mask": np.asarray(batch["attention_mask"], np.int32),
          "pixel_values": pixels.reshape(b, -1, pixels.shape[-1]), "image_grid_thw": grid.reshape(b, -1, 3),
          "state": np.asarray(batch["state"], np.float32), "actions": np.asarray(batch["actions"], np.float32),
          "action_mask": np.asarray(batch["action_mask"], bool)}


def train_step(state: TrainState, batch, backbone_params, *, backbone_model, head, tx, schedule, layer: int,
               frame_patches, embodiment_id: int, mask_padding: bool):
  """One head update; the features come from the frozen backbone, or from the batch when it was
  read from the feature cache ("features" [B, T, hidden])."""
  if "features" in batch:
    vl = batch["features"]
  else:
    vl = vla_policy.vla_features(backbone_model, backbone_params, batch, layer=layer, frame_patches=frame_patches)
  b = vl.shape[0]
  embodiment = jnp.full((b,), embodiment_id, jnp.int32)
  vl_mask = batch["attention_mask"].astype(bool) if mask_padding else None

  def loss_fn(params):
    return action_head.flow_matching_loss(head, params, vl.astype(jnp.float32), batch["state"][:, None, :],
                                          batch["actions"], batch["action_mask"], embodiment, rng=state.step_rng(),
                                          vl_mask=vl_mask)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state, update_metrics = apply_gradients(state, grads, tx)
  # Which samples were in the batch (tests compare data order across resumes).
  weights = jnp.arange(1, b + 1, dtype=jnp.float32)
  fingerprint = jnp.sum(batch["actions"].sum((1, 2)) * weights) + jnp.sum(batch["state"].sum(1) * weights)
  return new_state, {**metrics, **update_metrics, "lr": schedule(state.step), "batch_fingerprint": fingerprint}


# ---- setup -------------------------------------------------------------------------------------
@dataclasses.dataclass
class VLASetup:
  config: ml_collections.ConfigDict
  backbone: backbone_lib.Backbone
  backbone_params: Any      # frozen, on the mesh
  backbone_hash: str
  head: action_head.FlowMatchingHead
  layer: int
  state: TrainState
  abstract_state: Any
  step: Any                 # (state, model batch on the mesh) -> (state, metrics); compiled per frame_patches
  features: Any             # host model batch -> host features float [B, T, hidden] (the cache builder's)
  mesh: Any
  rules: Any
  data: ml_collections.ConfigDict | None = None
  handles: list = dataclasses.field(default_factory=list)


def build(config: ml_collections.ConfigDict, mesh, num_steps: int) -> VLASetup:
  """Frozen backbone on the mesh, the head's sharded train state and the jitted step."""
  check_config(config)
  rules = sharding_lib.as_rules(config.sharding.rules)
  # On the host: a 7B checkpoint must not land whole on one accelerator before it is sharded.
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    backbone = backbone_lib.load(config.model)
  backbone_hash = backbone_lib.content_hash(config.model.init_dir)
  layer = feature_layer(config, backbone)
  head = action_head.FlowMatchingHead(head_config(config, backbone))
  tx, schedule = make_optimizer(config.optim, num_steps)
  start = _start_params(config, head)

  def boxed_init(rng):
    params = head.init(rng, *action_head.dummy_inputs(head.config))["params"]
    return TrainState.create(params, tx, jax.random.fold_in(rng, 1))

  rng = jax.random.PRNGKey(config.seed)
  if start is None:
    state, abstract_state, shardings = partitioned.init_sharded(boxed_init, mesh, rules, rng)
  else:
    abstract_state, shardings = partitioned.state_shardings(boxed_init, mesh, rules, rng)
    params = jax.device_put(start, shardings.params)
    with sharding_lib.activation_context(mesh, rules):
      state = jax.jit(lambda p, r: TrainState.create(p, tx, jax.random.fold_in(r, 1)),
                      out_shardings=shardings)(params, rng)
  backbone_abstract = jax.eval_shape(lambda: backbone.model.init(jax.random.key(0), *backbone.dummy_inputs()))
  backbone_shardings = sharding_lib.logical_shardings(backbone_abstract["params"], mesh, rules)
  backbone_params = jax.device_put(backbone.params, backbone_shardings)
  backbone.params = None  # the host copy is no longer needed
  steps: dict[Any, partitioned.ShardedStep] = {}

  def step(state, batch):
    grid = batch.get("image_grid_thw")
    fp = vla_policy.frame_patches_of(np.asarray(grid.addressable_data(0))) if grid is not None else None
    if fp not in steps:
      steps[fp] = partitioned.ShardedStep(
          functools.partial(train_step, backbone_model=backbone.model, head=head, tx=tx, schedule=schedule,
                            layer=layer, frame_patches=fp, embodiment_id=int(config.vla.embodiment_id),
                            mask_padding=bool(config.vla.mask_padding)),
          mesh, rules, shardings, extra_shardings=(backbone_shardings,))
    return steps[fp](state, batch, backbone_params)

  features_jit = jax.jit(functools.partial(vla_policy.vla_features, backbone.model, layer=layer),
                         static_argnames=("frame_patches",))

  def host_features(batch):
    device_batch = sharding_lib.global_batch({k: batch[k] for k in MODEL_KEYS[:4]}, mesh)
    with sharding_lib.activation_context(mesh, rules):
      out = features_jit(backbone_params, device_batch,
                         frame_patches=vla_policy.frame_patches_of(batch["image_grid_thw"]))
    return sharding_lib.host_array(out)

  log.info("VLA: features after layer %d of %d (width %d), head %s with %s parameters", layer, backbone.num_layers,
           backbone.hidden_size, config.head.variant, f"{action_head.num_params(head.config):,}")
  return VLASetup(config, backbone, backbone_params, backbone_hash, head, layer, state, abstract_state, step,
                  host_features, mesh, rules)


def _start_params(config, head: action_head.FlowMatchingHead):
  """Host parameters to start from: a GR00T N1.5 checkpoint (`head.init_gr00t`) or None (random)."""
  if not config.head.init_gr00t:
    return None
  released, params = action_head.load_gr00t(config.head.init_gr00t)
  ours = head.config
  mismatch = {k: (getattr(released.config, k), getattr(ours, k)) for k in (
      "action_horizon", "action_dim", "max_state_dim", "hidden_size", "input_embedding_dim",
      "backbone_embedding_dim", "dit_num_layers", "vl_num_layers", "num_target_vision_tokens")
      if getattr(released.config, k) != getattr(ours, k)}
  if mismatch:
    raise ValueError(f"config.head.init_gr00t={config.head.init_gr00t!r} has other shapes than this head "
                     f"(checkpoint, ours): {mismatch}")
  if ours.has_projection and not released.config.has_projection:
    # The released head reads 2048-wide features; our backbone needs the projection in front, new.
    fresh = action_head.init_params(ours, jax.random.PRNGKey(config.seed))
    params = {**params, **{k: v for k, v in fresh.items() if k not in params}}
  return params


# ---- evaluation ------------------------------------------------------------------------------------
def make_heldout_evaluator(options: ml_collections.ConfigDict, setup: VLASetup):
  """Offline action error on held-out episodes (`options.datasets`, normalised with the training
  statistics, no augmentation), in the normalised action space over real steps and dims:

    eval/action_mse          one sampled chunk per observation (Euler from fixed noise), as deployed
    eval/action_mse_mean_of_k  the mean of `options.num_samples` sampled chunks, an estimate of
                             E[action | observation] (the MSE-optimal prediction)
    eval/mean_action_mse     always predicting the held-out mean action: the baseline

  A single sample's error is at least twice the conditional variance, so it can beat the mean-action
  baseline only once the observation explains over half of the actions' variance; the mean of k
  samples beats it as soon as the observation tells anything.
  """
  if not options.datasets:
    return None
  held_out = ml_collections.ConfigDict(setup.data.to_dict())
  held_out.update(datasets=[dict(d) for d in options.datasets], augment=False, num_workers=0,
                  global_batch_size=int(options.batch_size))
  handles = open_heldout_datasets(held_out, setup.handles)
  stream = iter(make_dataset(held_out, "train", handles=handles, process_index=0, process_count=1))
  batches = [model_batch(next(stream)) for _ in range(int(options.num_batches))]
  actions = np.concatenate([b["actions"] for b in batches])
  mask = np.concatenate([b["action_mask"] for b in batches])
  count = mask.sum()
  mean = (actions * mask).sum((0, 1)) / np.maximum(mask.sum((0, 1)), 1)
  baseline = float(((actions - mean) ** 2 * mask).sum() / count)
  config = setup.config
  k = max(1, int(options.get("num_samples", 8)))
  noise_key = jax.random.PRNGKey(int(options.seed))
  predict = jax.jit(functools.partial(vla_policy.predict_actions, setup.backbone.model, setup.head,
                                      layer=setup.layer, embodiment_id=int(config.vla.embodiment_id),
                                      mask_padding=bool(config.vla.mask_padding)),
                    static_argnames=("frame_patches",))

  def evaluate(state, step):
    del step
    single, averaged = 0.0, 0.0
    with sharding_lib.activation_context(setup.mesh, setup.rules):
      for i, batch in enumerate(batches):
        fp = vla_policy.frame_patches_of(batch["image_grid_thw"])
        draws = [sharding_lib.host_array(predict(
            setup.backbone_params, state.params, batch,
            jax.random.normal(jax.random.fold_in(noise_key, i * k + j), batch["actions"].shape, jnp.float32),
            frame_patches=fp)) for j in range(k)]
        single += float(((draws[0] - batch["actions"]) ** 2 * batch["action_mask"]).sum())
        averaged += float(((np.mean(draws, 0) - batch["actions"]) ** 2 * batch["action_mask"]).sum())
    return {"eval/action_mse": single / count, "eval/action_mse_mean_of_k": averaged / count,
            "eval/mean_action_mse": baseline}
  return evaluate


# ---- entry point ---------------------------------------------------------------------------------
def export(config, workdir: str, setup: VLASetup, params) -> dict[str, Any]:
  """The policy directory (process 0): head, configs, backbone reference, processor files,
  statistics and transforms of the first dataset's layout."""
  target = config.export.policy_dir
  if target == "none":
    return {"policy_dir": None}
  out_dir = os.path.abspath(target or os.path.join(workdir, "policy"))
  host = sharding_lib.host_tree(params)
  if jax.process_index() == 0:
    handle = setup.handles[0]
    d = config.data
    vla_policy.save(out_dir, head_params=host, head_config=setup.head.config, backbone=setup.backbone,
                    backbone_hash=setup.backbone_hash, layout=handle.source.spec.name, statistics=handle.statistics,
                    cameras=[c for c in d.cameras if c in handle.source.spec.cameras],
                    image_size=tuple(d.image_size), state_width=int(d.max_state_dim),
                    feature_layer=setup.layer, embodiment_id=int(config.vla.embodiment_id),
                    max_seq_len=int(d.max_seq_len), mask_padding=bool(config.vla.mask_padding),
                    system_prompt=d.system_prompt, compute_dtype=config.model.compute_dtype,
                    copy_backbone=bool(config.export.copy_backbone))
    log.info("wrote the policy to %s", out_dir)
  return {"policy_dir": out_dir}


def _cached_reading(config, data, handles, setup: VLASetup) -> dict[str, Any]:
  """make_dataset arguments that read samples from the feature cache (built on first use), or {}."""
  if not config.vla.cache_features:
    return {}
  if data.augment:
    raise ValueError("config.vla.cache_features=True needs config.data.augment=False: augmented images give "
                     "different features every epoch, so they are computed online")
  if jax.process_count() > 1:
    raise ValueError("config.vla.cache_features builds its cache in one process; with several processes "
                     "compute features online (cache_features=False)")
  description = feature_cache.cache_key(setup.backbone_hash, handles, data, setup.layer)
  directory = feature_cache.build(data.cache_dir or default_cache_dir(), description, handles=handles, data=data,
                                  features_fn=setup.features, to_model_batch=model_batch,
                                  batch_size=int(data.global_batch_size), progress=bool(data.progress))
  cache = feature_cache.FeatureCache(directory)
  return {"read": cache.read, "collate_fn": cache.collate}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the head in `workdir` (auto-resumes); returns the final metrics and the policy path."""
  mesh = mesh_lib.create_mesh(config.mesh.to_dict())
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.processor_dir = data.processor_dir or config.model.init_dir
  handles = open_datasets(data, "train")
  num_steps = int(config.train.num_steps)
  setup = build(config, mesh, num_steps)
  setup.data, setup.handles = data, handles
  data_iter = iter(make_dataset(data, "train", handles=handles, **_cached_reading(config, data, handles, setup)))
  backbone_ref = {"dir": os.path.abspath(config.model.init_dir), "sha256": setup.backbone_hash,
                  "family": setup.backbone.family.name, "feature_layer": setup.layer}

  def check_metadata(metadata):
    saved = (metadata or {}).get("backbone") or {}
    if saved.get("sha256") and saved["sha256"] != setup.backbone_hash:
      raise ValueError(f"{workdir}: its checkpoints were trained on the backbone {saved.get('dir')!r} (sha256 "
                       f"{saved['sha256'][:12]}...), but config.model.init_dir={config.model.init_dir!r} has sha256 "
                       f"{setup.backbone_hash[:12]}...; resume with that backbone or use a new workdir")

  to_model = (lambda batch: batch) if config.vla.cache_features else model_batch
  step = lambda state, batch, _: setup.step(state, sharding_lib.global_batch(to_model(batch), mesh))
  return loop.run(config, workdir, mesh, loop.Stage(
      name="vla", state=setup.state, abstract_state=setup.abstract_state, step=step, data_iter=data_iter,
      num_steps=num_steps, metadata={"dataset_statistics": dataset_statistics(handles), "backbone": backbone_ref},
      evaluators=evaluators.build(config, setup), export=lambda state: export(config, workdir, setup, state.params),
      check_metadata=check_metadata, progress_keys=("loss",)))
