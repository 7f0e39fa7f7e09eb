"""Stage 1 trainer: supervised fine-tuning on FAST samples mixed with conversation data.

    python launch/train.py --config=configs/sft.py:tiny,... --workdir=runs/sft

One step = one (micro-)batch of `data.global_batch_size` tokenised samples; the loss is the
token-mean cross-entropy over assistant tokens only (`loss_mask` from the chat template). With
`optim.accumulate_steps = k` the optimiser updates every k steps (optax.MultiSteps) and the lr
schedule counts updates. Parameters start from an HF directory (`model.init_dir`, vocabulary
extended with the action tokens) or, for the tiny variant, from a random init. The model is
exported as an HF directory at the end (`export.hf_dir`), or on request with `export.only`.
Checkpoints hold the train state and the data iterator's position, so a resumed run continues
exactly; held-out metrics come from the `sft_heldout` evaluator (`sft_eval.py`, `config.evals`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from roboalign_jax.data.conversations import ConversationSource
from roboalign_jax.data.pipeline import dataset_statistics, make_dataset, open_datasets
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.parallel import mesh as mesh_lib
from roboalign_jax.parallel import partitioned
from roboalign_jax.parallel import sharding as sharding_lib
from roboalign_jax.train import evaluators, loop, sft_batches
from roboalign_jax.train.optimizer import make_optimizer
from roboalign_jax.train.train_state import TrainState, apply_gradients

log = logging.getLogger(__name__)


# ---- loss ----------------------------------------------------------------------------------------
def sft_loss(params, model, batch, *, action_vocab, frame_patches: int | None):
  """Token-mean cross-entropy on supervised tokens and accuracy metrics.

  batch: input_ids / attention_mask / loss_mask int32 [B, T], pixel_values f32 [N, 1176],
  image_grid_thw int32 [n, 3]. Position t predicts token t+1, weighted by loss_mask[t+1].
  """
  out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                    batch["image_grid_thw"], frame_patches=frame_patches)
  logits = out.logits[:, :-1]
  targets = batch["input_ids"][:, 1:]
  weights = (batch["loss_mask"][:, 1:] * batch["attention_mask"][:, 1:]).astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  loss = (ce * weights).sum() / count
  correct = (logits.argmax(-1) == targets).astype(jnp.float32)
  action = weights * action_vocab.is_action_token(targets).astype(jnp.float32)
  real = batch["attention_mask"].astype(jnp.float32)
  return loss, {
      "loss": loss,
      "token_accuracy": (correct * weights).sum() / count,
      "fast_token_accuracy": (correct * action).sum() / jnp.maximum(action.sum(), 1.0),
      "supervised_tokens": weights.sum(),
      "padding_fraction": 1.0 - real.mean(),
  }


def train_step(state: TrainState, batch, *, model, tx, schedule, action_vocab, frame_patches, accumulate):
  grad_fn = jax.value_and_grad(sft_loss, has_aux=True)
  (_, metrics), grads = grad_fn(state.params, model, batch, action_vocab=action_vocab,
                                frame_patches=frame_patches)
  new_state, update_metrics = apply_gradients(state, grads, tx)
  # Which samples were in the batch (tests compare data order across resumes).
  ids = batch["input_ids"].astype(jnp.float32)
  weights = jnp.arange(1, ids.size + 1, dtype=jnp.float32).reshape(ids.shape) / ids.size
  return new_state, {**metrics, **update_metrics, "lr": schedule(state.step // accumulate),
                     "batch_fingerprint": jnp.sum(ids * weights)}


# ---- model and state -----------------------------------------------------------------------------
def load_backbone(config: ml_collections.ConfigDict) -> backbone_lib.Backbone:
  """The backbone to fine-tune: `model.init_dir` (vocabulary extended), or a random init of
  `model.variant` whose vocabulary holds the tokenizer of `data.processor_dir` (params None)."""
  return backbone_lib.load(config.model, processor_dir=config.data.processor_dir)


def optimizer_steps(config: ml_collections.ConfigDict, num_steps: int) -> int:
  k = int(config.optim.accumulate_steps)
  if k < 1 or num_steps % k:
    raise ValueError(f"config.train.num_steps={num_steps} must be a multiple of config.optim.accumulate_steps={k}")
  return num_steps // k


@dataclasses.dataclass
class SFTSetup:
  config: ml_collections.ConfigDict
  backbone: backbone_lib.Backbone
  state: TrainState
  abstract_state: Any
  shardings: Any
  step: Any          # (state, global batch) -> (state, metrics); compiled per frame_patches value
  teacher_eval: Any  # (params, global batch) -> metrics, deterministic
  mesh: Any
  rules: Any
  data: ml_collections.ConfigDict | None = None  # the training data config (mixture weights resolved)
  handles: list = dataclasses.field(default_factory=list)  # opened training datasets (statistics)


def build(config: ml_collections.ConfigDict, mesh, num_steps: int) -> SFTSetup:
  """Model, sharded initial state and jitted steps of the SFT stage on `mesh`."""
  rules = sharding_lib.as_rules(config.sharding.rules)
  backbone = load_backbone(config)
  model = backbone.model
  dummy = backbone.dummy_inputs()
  abstract_params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy)))
  accumulate = int(config.optim.accumulate_steps)
  tx, schedule = make_optimizer(config.optim, optimizer_steps(config, num_steps), params=abstract_params["params"])

  def init_state(rng):
    params = model.init(rng, *dummy)["params"]
    return TrainState.create(params, tx, jax.random.fold_in(rng, 1))

  rng = jax.random.PRNGKey(config.seed)
  if backbone.params is None:
    state, abstract_state, shardings = partitioned.init_sharded(init_state, mesh, rules, rng)
  else:
    abstract_state, shardings = partitioned.state_shardings(init_state, mesh, rules, rng)
    params = jax.device_put(backbone.params, shardings.params)
    with sharding_lib.activation_context(mesh, rules):
      state = jax.jit(lambda p, r: TrainState.create(p, tx, jax.random.fold_in(r, 1)),
                      out_shardings=shardings)(params, rng)
    backbone.params = None  # the host copy is no longer needed

  steps: dict[Any, partitioned.ShardedStep] = {}
  mode = config.model.per_image_vision

  def step(state, batch):
    grid = batch["image_grid_thw"]
    if grid.is_fully_addressable:
      local = np.asarray(grid)
    elif mode == "auto":
      raise ValueError("config.model.per_image_vision='auto' decides per batch, which processes could disagree "
                       "on; with several processes set it to 'on' or 'off'")
    else:
      local = np.asarray(grid.addressable_data(0))
    fp = sft_batches.frame_patches(local, mode)
    if fp not in steps:
      steps[fp] = partitioned.ShardedStep(
          functools.partial(train_step, model=model, tx=tx, schedule=schedule, action_vocab=backbone.action_vocab,
                            frame_patches=fp, accumulate=accumulate), mesh, rules, shardings)
    return steps[fp](state, batch)

  teacher_jit = {}

  def teacher_eval(params, host_batch):
    """Held-out metrics of a whole batch every process holds (numpy) -> replicated scalars."""
    fp = sft_batches.frame_patches(np.asarray(host_batch["image_grid_thw"]), mode)
    sharding = sharding_lib.batch_sharding(mesh)
    batch = {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
             for k, v in host_batch.items()}
    if fp not in teacher_jit:
      teacher_jit[fp] = jax.jit(lambda p, b: sft_loss(p, model, b, action_vocab=backbone.action_vocab,
                                                       frame_patches=fp)[1])
    with sharding_lib.activation_context(mesh, rules):
      metrics = teacher_jit[fp](params, batch)
    return {k: v for k, v in metrics.items() if k in ("loss", "token_accuracy", "fast_token_accuracy")}

  return SFTSetup(config, backbone, state, abstract_state, shardings, step, teacher_eval, mesh, rules)


# ---- data ----------------------------------------------------------------------------------------
def resolve_data(config: ml_collections.ConfigDict):
  """(data config with mixture weights resolved, opened robot datasets, samples in one epoch)."""
  data = ml_collections.ConfigDict(config.data.to_dict())
  if data.sample != "fast_sft" or not data.processor_dir:
    raise ValueError("the SFT stage needs tokenised FAST samples: config.data.sample='fast_sft' and "
                     f"config.data.processor_dir set (got sample={data.sample!r}, "
                     f"processor_dir={data.processor_dir!r})")
  if not data.datasets and not data.conversations:
    raise ValueError("config.data has neither robot datasets nor conversations; nothing to train on")
  handles = open_datasets(data, "train") if data.datasets else []
  sizes = [h.index.num_steps for h in handles]
  conversations = [dict(c) for c in data.conversations]
  for entry in conversations:
    sizes.append(len(ConversationSource(entry["path"], entry.get("image_root") or None)))
  if config.sft.weight_by_size:
    for handle, size in zip(handles, sizes):
      handle.weight = float(size)
    for entry, size in zip(conversations, sizes[len(handles):]):
      entry["weight"] = float(size)
    data.datasets = [{**dict(d), "weight": float(s)} for d, s in zip(data.datasets, sizes)]
    data.conversations = conversations
  return data, handles, int(sum(sizes))


def num_train_steps(config: ml_collections.ConfigDict, epoch_size: int) -> int:
  if config.train.num_steps:
    return int(config.train.num_steps)
  steps = math.ceil(config.sft.num_epochs * epoch_size / config.data.global_batch_size)
  k = int(config.optim.accumulate_steps)
  return max(k, -(-steps // k) * k)


def make_train_data(config, data, handles, patch_dim: int):
  if jax.process_count() > 1 and not (data.max_seq_len and config.sft.images_per_batch):
    raise ValueError("with several processes every process must build the same shapes: set "
                     "config.data.max_seq_len and config.sft.images_per_batch")
  shape = functools.partial(sft_batches.shape_batch, pad_multiple=config.sft.pad_multiple,
                            max_len=data.max_seq_len, num_images=config.sft.images_per_batch, patch_dim=patch_dim)
  return make_dataset(data, "train", handles=handles).map(shape)


# ---- export --------------------------------------------------------------------------------------
def export(config: ml_collections.ConfigDict, workdir: str, params, backbone: backbone_lib.Backbone) -> str | None:
  """Writes the HF directory (process 0); returns its path, None when `export.hf_dir` is "none"."""
  if config.export.hf_dir == "none":
    return None
  out_dir = os.path.abspath(config.export.hf_dir or os.path.join(workdir, "hf"))
  host = sharding_lib.host_tree(params)
  if jax.process_index() == 0:
    backbone.export(host, out_dir)
    log.info("exported the %s model to %s", config.stage, out_dir)
  return out_dir


# ---- entry point ---------------------------------------------------------------------------------
def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or, with `export.only`, exports) the SFT model; returns the final metrics."""
  mesh = mesh_lib.create_mesh(config.mesh.to_dict())
  data, handles, epoch_size = resolve_data(config)
  num_steps = num_train_steps(config, epoch_size)
  setup = build(config, mesh, num_steps)
  setup.data, setup.handles = data, handles
  data_iter = iter(make_train_data(config, data, handles, setup.backbone.patch_dim))
  step = lambda state, batch, _: setup.step(state, sharding_lib.global_batch(batch, mesh))
  return loop.run(config, workdir, mesh, loop.Stage(
      name="sft", state=setup.state, abstract_state=setup.abstract_state, step=step, data_iter=data_iter,
      num_steps=num_steps, metadata={"dataset_statistics": dataset_statistics(handles), "num_steps": num_steps},
      evaluators=evaluators.build(config, setup),
      export=lambda state: {"hf_dir": export(config, workdir, state.params, setup.backbone)}))
