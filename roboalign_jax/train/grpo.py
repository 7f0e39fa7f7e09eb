"""Stage 2 trainer: GRPO on FAST-token prompts, the update loop EasyR1 runs.

One step = one rollout batch of `data.global_batch_size` prompts:

  1. sample G responses per prompt from the current policy (`rl.rollout.generate`, KV cache);
  2. score them with `config.grpo.reward` (`rl.rewards`; RoboAlign's (format + prefix accuracy) / 2
     on token ids by default) against each prompt's target payload;
  3. group advantages over each prompt's G samples (`rl.grpo.group_advantages`); optionally drop
     groups whose rewards are all equal (their advantages are 0; they only dilute the token mean);
  4. recompute the old log-probs with the current params and the reference log-probs with the
     frozen initial params, full forward, logits / temperature;
  5. split the samples, in rollout order, into updates of `grpo.update_batch_size` and take one
     optimiser step per update (token-mean loss over the whole update, gradients summed over
     micro-batches); an update with a non-finite gradient norm is skipped and counted.

Degenerate batches have defined outcomes, each counted in the step's record and logged as a warning:
a prompt longer than `data.max_seq_len` (`PromptCollate` keeps the batch's shape; `prompts_too_long`)
or with an empty target (no ground truth to score; `empty_targets`) is left out of the update and of
the reward means, and a batch with no usable prompt raises; a batch whose groups all have equal
rewards (every advantage 0) is counted (`zero_advantage_batch` = 1): with online filtering it takes
no optimiser step (`updates` = 0, `optimizer_steps` unchanged), without it the update moves the
policy only through the KL term and weight decay, as EasyR1's does; every response cut at `rollout.max_new_tokens` without an end-of-turn
token is scored by the reward's rules (the format check fails) and logged (`response_truncated` = 1).

`train.num_steps` rollout batches make one epoch over `grpo.num_prompts` prompts unless set.
The shared loop (`train/loop.py`) runs the rollout batches: checkpoints (every
`checkpoint.every_steps` rollout batches, and on SIGTERM) hold the policy's train state and the
prompt iterator's position; the rollout RNG is `fold_in(state.rng, step)`, so a resumed run
samples what an uninterrupted one would. The reference is re-read from `model.init_dir` on
resume. At the end the policy is exported as an HF directory.

Validation (EasyR1's `trainer.val_freq` / `val_before_train`) is the `grpo_validation` evaluator
declared in `config.evals` (`train/grpo_eval.py`): held-out prompts scored with the same reward,
logged as `val/...` before the first rollout batch, every `every` batches and after the last.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from roboalign_jax.data import samples as samples_lib
from roboalign_jax.data.pipeline import dataset_statistics, make_dataset, open_datasets
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.models import sampling
from roboalign_jax.parallel import mesh as mesh_lib
from roboalign_jax.parallel import partitioned
from roboalign_jax.parallel import sharding as sharding_lib
from roboalign_jax.rl import grpo as grpo_lib
from roboalign_jax.rl import rewards
from roboalign_jax.train import evaluators, loop
from roboalign_jax.train.optimizer import make_optimizer
from roboalign_jax.train.train_state import TrainState, apply_gradients

log = logging.getLogger(__name__)

# Per-update metrics averaged into each step's record (policy_loss's and apply_gradients').
UPDATE_METRICS = ("loss", "pg_loss", "kl", "entropy", "ratio", "ppo_kl", "clip_frac_upper", "clip_frac_lower",
                  "clip_frac_dual", "grad_norm")


def num_rollout_steps(config: ml_collections.ConfigDict) -> int:
  """Rollout batches of the run: `train.num_steps`, or one epoch over `grpo.num_prompts`."""
  if config.train.num_steps:
    return int(config.train.num_steps)
  steps = config.grpo.num_prompts // config.data.global_batch_size
  if steps < 1:
    raise ValueError(f"config.grpo.num_prompts={config.grpo.num_prompts} is less than one rollout batch of "
                     f"config.data.global_batch_size={config.data.global_batch_size} prompts")
  return steps


def updates_per_rollout(config: ml_collections.ConfigDict) -> int:
  """Optimiser steps per rollout batch without filtering (20 for the paper's 512 x 5 / 128)."""
  rows = config.data.global_batch_size * config.rollout.num_samples
  return -(-rows // config.grpo.update_batch_size)


def check_config(config: ml_collections.ConfigDict, data_parallel: int) -> None:
  g, u, m = config.grpo, config.grpo.update_batch_size, config.grpo.micro_batch_size
  if not config.model.init_dir:
    raise ValueError("config.model.init_dir is empty; expected the Stage 1 model's HF directory "
                     "(configs/grpo.py:VARIANT,init=DIR)")
  if not config.data.datasets:
    raise ValueError("config.data.datasets is empty; expected a Bridge-layout TFDS directory "
                     "(configs/grpo.py:VARIANT,data=DIR)")
  if config.data.sample != "grpo":
    raise ValueError(f"config.data.sample={config.data.sample!r}; the GRPO stage needs 'grpo' prompts")
  if config.data.max_seq_len <= 0:
    raise ValueError("config.data.max_seq_len must be > 0: prompts are padded to it so every rollout "
                     "batch has one compiled shape")
  if config.rollout.num_samples < 2:
    raise ValueError(f"config.rollout.num_samples={config.rollout.num_samples}; GRPO compares samples of a "
                     "prompt, so it needs at least 2")
  if m <= 0 or u <= 0 or u % m:
    raise ValueError(f"config.grpo.update_batch_size={u} must be a positive multiple of "
                     f"config.grpo.micro_batch_size={m}")
  if m % data_parallel:
    raise ValueError(f"config.grpo.micro_batch_size={m} does not split over the mesh's data x fsdp = "
                     f"{data_parallel} ways")
  if config.rollout.temperature <= 0:
    raise ValueError(f"config.rollout.temperature={config.rollout.temperature}; GRPO samples, so it must be > 0")
  rewards.get_reward(config.grpo.reward)
  grpo_lib._read_config(grpo_lib.GRPOLossConfig(g.clip_low, g.clip_high, g.clip_dual, g.kl_coef))


# ---- batches -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Prompts:
  """One rollout batch's prompts (all processes' rows, host arrays). B prompts, T tokens, P patches."""
  input_ids: np.ndarray       # int32 [B, T], left-padded
  attention_mask: np.ndarray  # int32 [B, T]
  pixel_values: np.ndarray    # float32 [B, P, 1176]
  image_grid_thw: np.ndarray  # int32 [B, 3]
  targets: list[dict]         # B target payloads for the reward (e.g. {"fast_ids": [...]})
  # int32 [B], each prompt's true token count; one over T marks a prompt `PromptCollate` replaced
  # (too long to train on). None: every prompt fits.
  prompt_lengths: np.ndarray | None = None
  instructions: list[str] | None = None  # B instructions, to name skipped prompts in warnings

  def left_out(self) -> tuple[np.ndarray, np.ndarray]:
    """(too_long, empty_target), bool [B] each: prompts the update leaves out."""
    b, t = self.input_ids.shape
    lengths = np.zeros(b, np.int64) if self.prompt_lengths is None else np.asarray(self.prompt_lengths)
    return lengths > t, np.array([rewards.is_empty_target(x) for x in self.targets], bool)

  def describe(self, i: int) -> str:
    name = f"prompt {i}"
    if self.instructions is not None:
      name += f" ({self.instructions[i]!r})"
    return name


# Model inputs of a prompt sample, which `PromptCollate` swaps out for a too-long prompt.
PROMPT_INPUT_KEYS = ("input_ids", "pixel_values", "image_grid_thw")


class PromptCollate:
  """The GRPO prompt builder's collate, keeping a batch when one of its prompts is too long.

  The builder pads prompts to `config.data.max_seq_len` and raises on a longer one, which would end
  a run at the first long instruction. Here a too-long prompt's model inputs are replaced by those
  of the batch's first prompt that fits, so every batch keeps its compiled shape, and
  `prompt_length` (int32 [B], the true token counts) lets the trainer leave the replaced rows out
  of the update, counted (`prompts_too_long`) and named in a warning. Instruction and target stay
  the prompt's own. A batch none of whose prompts fit raises, naming the lengths and the limit.
  """

  def __init__(self, builder, max_seq_len: int):
    self.builder, self.max_seq_len = builder, int(max_seq_len)

  def __call__(self, items: list[dict]) -> dict:
    lengths = np.array([len(s["input_ids"]) for s in items], np.int32)
    fits = lengths <= self.max_seq_len
    if not fits.any():
      raise ValueError(f"every prompt of this GRPO batch is longer than config.data.max_seq_len={self.max_seq_len} "
                       f"tokens (prompt lengths {lengths.tolist()}, first instruction "
                       f"{items[0].get('instruction')!r}); raise config.data.max_seq_len")
    donor = items[int(np.argmax(fits))]
    items = [s if ok else {**s, **{k: donor[k] for k in PROMPT_INPUT_KEYS if k in donor}}
             for s, ok in zip(items, fits)]
    batch = self.builder.collate(items)
    batch["prompt_length"] = lengths
    return batch


def _allgather(x: np.ndarray) -> np.ndarray:
  """Concatenates every process's rows (processes in order); identity with one process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


def _allgather_objects(items: list) -> list:
  """Every process's JSON-serialisable items, in process order; identity with one process."""
  if jax.process_count() == 1:
    return list(items)
  encoded = [np.frombuffer(json.dumps(item).encode(), np.uint8) for item in items]
  width = int(_allgather(np.array([max([len(e) for e in encoded] + [1])], np.int32)).max())
  rows = np.zeros((len(items), width), np.uint8)
  lengths = np.array([len(e) for e in encoded], np.int32)
  for i, e in enumerate(encoded):
    rows[i, :len(e)] = e
  rows, lengths = _allgather(rows), _allgather(lengths)
  return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, lengths)]


def prompts_from_batch(batch: dict[str, Any], *, gather: bool = True) -> Prompts:
  """The data pipeline's GRPO batch (this process's rows) -> every process's prompts.

  gather=False: the batch already holds every prompt (one read by each process alike, e.g. the
  validation set of `grpo_eval`), so nothing is gathered."""
  grid = np.asarray(batch["image_grid_thw"], np.int32)
  b = grid.shape[0]
  if batch["input_ids"].shape[0] != b:
    raise ValueError(f"GRPO batch has {batch['input_ids'].shape[0]} prompts but {b} images; the stage "
                     "expects exactly one image (the primary camera) per prompt")
  if not (grid == grid[:1]).all():
    raise ValueError(f"GRPO prompts' images have different patch grids {np.unique(grid, axis=0).tolist()}; "
                     "set config.data.image_size so that every image is resized to one size")
  patches = int(np.prod(grid[0]))
  pixels = np.asarray(batch["pixel_values"], np.float32).reshape(b, patches, -1)
  rows, objects = (_allgather, _allgather_objects) if gather else (np.asarray, list)
  lengths = batch.get("prompt_length")
  lengths = np.asarray(batch["attention_mask"]).sum(1) if lengths is None else lengths
  instructions = batch.get("instruction")
  return Prompts(input_ids=rows(np.asarray(batch["input_ids"], np.int32)),
                 attention_mask=rows(np.asarray(batch["attention_mask"], np.int32)),
                 pixel_values=rows(pixels), image_grid_thw=rows(grid), targets=objects(list(batch["target"])),
                 prompt_lengths=rows(np.asarray(lengths, np.int32)),
                 instructions=None if instructions is None else objects([str(x) for x in instructions]))


def informative_samples(rewards_: np.ndarray, group_size: int) -> np.ndarray:
  """bool [B*G]: True for the samples of groups whose rewards are not all equal (the others have
  zero advantage; online filtering drops them)."""
  groups = np.asarray(rewards_).reshape(-1, group_size)
  return np.repeat((groups != groups[:, :1]).any(axis=1), group_size)


def training_rows(prompts: Prompts, tokens: np.ndarray, mask: np.ndarray, advantages: np.ndarray,
                  rollout_logprobs: np.ndarray, keep: np.ndarray, num_samples: int) -> dict[str, np.ndarray]:
  """Prompt + response sequences of the kept samples, in rollout order (host arrays, R rows).

  input_ids / attention_mask [R, T+N] (prompt left-padded, response right-padded after EOS),
  response_mask float32 [R, N], advantages [R], pixel_values [R, P, 1176], image_grid_thw [R, 3].
  """
  rep = lambda x: np.repeat(x, num_samples, axis=0)[keep]
  return {
      "input_ids": np.concatenate([rep(prompts.input_ids), tokens[keep]], axis=1).astype(np.int32),
      "attention_mask": np.concatenate([rep(prompts.attention_mask), mask[keep].astype(np.int32)], axis=1),
      "response_mask": mask[keep].astype(np.float32),
      "advantages": advantages[keep].astype(np.float32),
      "rollout_logprobs": rollout_logprobs[keep].astype(np.float32),
      "pixel_values": rep(prompts.pixel_values),
      "image_grid_thw": rep(prompts.image_grid_thw),
  }


def split_updates(rows: dict[str, np.ndarray], update_size: int) -> list[dict[str, np.ndarray]]:
  """Consecutive updates of `update_size` rows. The last one is filled up with copies of its first
  rows whose response_mask is 0, so every update has one shape and the copies add nothing."""
  n = rows["input_ids"].shape[0]
  out = []
  for start in range(0, n, update_size):
    part = {k: v[start:start + update_size] for k, v in rows.items()}
    short = update_size - part["input_ids"].shape[0]
    if short:
      fill = np.arange(short) % part["input_ids"].shape[0]
      part = {k: np.concatenate([v, v[fill]]) for k, v in part.items()}
      part["response_mask"][-short:] = 0.0
    out.append(part)
  return out


def _this_process_rows(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous share of every array's rows (what `global_batch` assembles)."""
  count = jax.process_count()
  return rows if count == 1 else {k: np.array_split(v, count)[jax.process_index()] for k, v in rows.items()}


# ---- model functions -----------------------------------------------------------------------------
def sequence_logprobs(params, model, rows, *, prompt_len: int, temperature: float, frame_patches: int):
  """log softmax(logits / temperature) of each response token under `params`: f32 [R, N].

  rows: input_ids / attention_mask [R, T+N] (T = prompt_len), pixel_values [R, P, 1176],
  image_grid_thw [R, 3]. Position T-1 (the last prompt token, real in every row) predicts
  response token 0.
  """
  pixels = rows["pixel_values"]
  out = model.apply({"params": params}, rows["input_ids"], rows["attention_mask"],
                    pixels.reshape(-1, pixels.shape[-1]), rows["image_grid_thw"], frame_patches=frame_patches)
  logits = out.logits[:, prompt_len - 1:-1]
  return grpo_lib.token_logprobs(logits, rows["input_ids"][:, prompt_len:], temperature)


def _split_micro(x, n: int):
  """[U, ...] -> [n, U/n, ...], micro-batch j = rows j, j+n, j+2n, ...: strided, so each
  micro-batch keeps rows from every data-parallel shard."""
  return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)


def _merge_micro(x):
  """Inverse of `_split_micro`: [n, U/n, ...] -> [U, ...]."""
  return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def batch_logprobs(params, rows, *, model, num_micro: int, **kw):
  """`sequence_logprobs` of an update's rows, micro-batch by micro-batch (bounds activation memory)."""
  inputs = {k: rows[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
  micro = jax.tree.map(lambda x: _split_micro(x, num_micro), inputs)
  return _merge_micro(jax.lax.map(lambda mb: sequence_logprobs(params, model, mb, **kw), micro))


def update_step(state: TrainState, rows, *, model, tx, schedule, loss_config, num_micro: int, use_ref: bool, **kw):
  """One optimiser step on an update batch: token-mean GRPO loss over all its response tokens.

  Each micro-batch's loss (a mean over its own tokens) is weighted by its share of the update's
  tokens, so the summed gradient is the gradient of the whole update's token mean.
  """
  total = jnp.maximum(rows["response_mask"].sum(), 1.0)

  def micro_loss(params, mb):
    logp = sequence_logprobs(params, model, mb, **kw)
    loss, metrics = grpo_lib.policy_loss(logp, mb["old_logprobs"], mb["ref_logprobs"] if use_ref else None,
                                         mb["advantages"], mb["response_mask"], loss_config)
    weight = mb["response_mask"].sum() / total
    return loss * weight, {k: v * weight for k, v in metrics.items()}

  grad_fn = jax.grad(micro_loss, has_aux=True)
  micro = jax.tree.map(lambda x: _split_micro(x, num_micro), rows)
  if num_micro == 1:
    grads, metrics = grad_fn(state.params, jax.tree.map(lambda x: x[0], micro))
  else:
    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, state.params, first))

    def body(acc, mb):
      return jax.tree.map(jnp.add, acc, grad_fn(state.params, mb)), None
    (grads, metrics), _ = jax.lax.scan(body, zeros, micro)
  new_state, update_metrics = apply_gradients(state, grads, tx)
  return new_state, {**metrics, **update_metrics, "lr": schedule(state.step)}


# ---- setup -------------------------------------------------------------------------------------
@dataclasses.dataclass
class GRPOSetup:
  backbone: backbone_lib.Backbone
  state: TrainState
  abstract_state: Any
  ref_params: Any        # frozen initial policy, sharded like the policy; None when kl_coef == 0
  eos_ids: list[int]
  make_functions: Any    # frame_patches -> (logprobs, update), built on first use
  # What evaluators read (`grpo_eval`): the run's config and mesh, the prompt data config (with
  # its processor_dir) and the opened training datasets (statistics, and which data is trained on).
  config: ml_collections.ConfigDict | None = None
  mesh: Any = None
  data: ml_collections.ConfigDict | None = None
  handles: list = dataclasses.field(default_factory=list)

  def functions(self, frame_patches: int):
    return self.make_functions(frame_patches)


def build(config: ml_collections.ConfigDict, mesh, *, data: ml_collections.ConfigDict | None = None,
          handles=()) -> GRPOSetup:
  """Backbone, sharded train state and reference, and the jitted log-prob / update functions
  (`data` / `handles`: the prompt data config and its opened datasets, kept for evaluators).

  logprobs: (params, update rows) -> f32 [U, N]; update: (state, update rows) -> (state, metrics).
  Both are compiled for prompts of `data.max_seq_len` tokens and images of `frame_patches` patches.
  """
  rules = sharding_lib.as_rules(config.sharding.rules)
  # On the host: a 7B checkpoint must not land whole on one accelerator before it is sharded.
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    backbone = backbone_lib.load(config.model)
  model = backbone.model
  dummy = backbone.dummy_inputs()
  total_updates = num_rollout_steps(config) * updates_per_rollout(config)
  tx, schedule = make_optimizer(config.optim, total_updates)

  def boxed_init(rng):
    return TrainState.create(model.init(rng, *dummy)["params"], tx, rng)

  rng = jax.random.PRNGKey(config.seed)
  abstract_state, shardings = partitioned.state_shardings(boxed_init, mesh, rules, rng)
  g = config.grpo
  use_ref = g.kl_coef > 0
  # The reference gets its own buffers: the policy's are donated to every update.
  ref_params = jax.device_put(backbone.params, shardings.params) if use_ref else None
  params = jax.device_put(backbone.params, shardings.params)
  with sharding_lib.activation_context(mesh, rules):
    state = jax.jit(lambda p, r: TrainState.create(p, tx, r), out_shardings=shardings)(params, rng)
  backbone.params = None  # the host copy is no longer needed

  num_micro = g.update_batch_size // g.micro_batch_size
  rows_sharding = sharding_lib.batch_sharding(mesh)
  loss_config = grpo_lib.GRPOLossConfig(g.clip_low, g.clip_high, g.clip_dual, g.kl_coef)

  @functools.lru_cache(maxsize=None)
  def make_functions(frame_patches: int):
    kw = dict(prompt_len=int(config.data.max_seq_len), temperature=float(config.rollout.temperature),
              frame_patches=frame_patches)
    logprobs_jit = jax.jit(functools.partial(batch_logprobs, model=model, num_micro=num_micro, **kw),
                           in_shardings=(shardings.params, rows_sharding), out_shardings=rows_sharding)

    def logprobs(params, rows):
      with sharding_lib.activation_context(mesh, rules):
        return logprobs_jit(params, rows)

    update = partitioned.ShardedStep(
        functools.partial(update_step, model=model, tx=tx, schedule=schedule, loss_config=loss_config,
                          num_micro=num_micro, use_ref=use_ref, **kw), mesh, rules, shardings)
    return logprobs, update

  return GRPOSetup(backbone, state, abstract_state, ref_params, backbone.end_of_turn_ids, make_functions,
                   config=config, mesh=mesh, data=data, handles=list(handles))


# ---- one rollout batch ---------------------------------------------------------------------------
@dataclasses.dataclass
class RolloutPlan:
  """What a scored rollout batch trains on, and its record (`plan_update`)."""
  advantages: np.ndarray  # float32 [B*G]
  keep: np.ndarray        # int [R]: the samples the updates take, in rollout order (empty: no update)
  record: dict[str, float]
  warnings: list[str]     # what was degenerate about the batch, for the log


def check_prompts(prompts: Prompts, max_seq_len: int) -> tuple[np.ndarray, list[str]]:
  """bool [B], the prompts a rollout batch can train on, and a warning per kind left out.

  Raises when none is left: the batch would teach nothing, and the cause (a max_seq_len below
  every prompt, targets the FAST tokenizer left empty) is the data's or the config's.
  """
  too_long, empty = prompts.left_out()
  usable = ~(too_long | empty)
  lengths = prompts.prompt_lengths
  named = lambda flags, detail: ", ".join(prompts.describe(i) + detail(i) for i in np.flatnonzero(flags)[:4]) + (
      ", ..." if flags.sum() > 4 else "")
  if not usable.any():
    raise ValueError(f"none of the {usable.size} prompts of this rollout batch can be trained on: "
                     f"{int(too_long.sum())} longer than config.data.max_seq_len={max_seq_len} tokens, "
                     f"{int(empty.sum())} with an empty target ({named(too_long | empty, lambda i: '')}); "
                     "raise config.data.max_seq_len or check the targets' FAST ids")
  warnings = []
  if too_long.any():
    warnings.append(f"{int(too_long.sum())} prompt(s) longer than config.data.max_seq_len={max_seq_len} tokens "
                    f"left out of the update (prompts_too_long): "
                    f"{named(too_long, lambda i: f' has {int(lengths[i])} tokens')}")
  if empty.any():
    warnings.append(f"{int(empty.sum())} prompt(s) with an empty target (no ground-truth FAST ids to score "
                    f"against) left out of the update (empty_targets): {named(empty, lambda i: '')}")
  return usable, warnings


def plan_update(scores: dict[str, np.ndarray], tokens: np.ndarray, mask: np.ndarray, *, usable: np.ndarray,
                num_samples: int, online_filtering: bool, eos_ids, max_new_tokens: int) -> RolloutPlan:
  """Advantages, the kept samples and the record of a scored rollout batch (host arrays).

  scores: `rewards.score_responses`' arrays [B*G]; tokens / mask: the rollout's [B*G, N];
  usable: bool [B] from `check_prompts`. Rows of unusable prompts count nowhere: not in the
  reward means, not in the update. When no usable group's rewards differ, every advantage is 0
  (`zero_advantage_batch` = 1): online filtering then keeps no sample and the caller takes no
  optimiser step; without it every usable sample is kept, as EasyR1 does (the step has only the
  KL term and weight decay).
  """
  g = num_samples
  rows = np.repeat(np.asarray(usable, bool), g)
  advantages = np.asarray(grpo_lib.group_advantages(scores["overall"], g), np.float32)
  informative = informative_samples(scores["overall"], g) & rows
  keep_rows = informative if online_filtering else rows
  zero_advantage = not informative.any()
  keep = np.flatnonzero(keep_rows)
  # Reached max_new_tokens without an end-of-turn token.
  truncated = mask[:, -1].astype(bool) & ~np.isin(tokens[:, -1], np.asarray(eos_ids))
  record = {"reward": float(scores["overall"][rows].mean())}
  record.update({f"{k}_reward": float(v[rows].mean()) for k, v in scores.items() if k not in ("overall", "length")})
  record.update({
      "response_length": float(scores["length"][rows].mean()),
      "response_truncated": float(truncated[rows].mean()),
      "informative_groups": float(informative[rows].reshape(-1, g)[:, 0].mean()),
      "zero_advantage_batch": float(zero_advantage)})
  warnings = []
  if record["response_truncated"] == 1.0:
    warnings.append(f"every response reached rollout.max_new_tokens={max_new_tokens} without an end-of-turn "
                    "token (response_truncated=1.0); the reward scores them as they are (a cut-off answer fails "
                    "the format check)")
  if zero_advantage:
    values = np.unique(scores["overall"][rows])
    shown = ", ".join(f"{v:.4g}" for v in values[:4]) + (", ..." if values.size > 4 else "")
    outcome = ("online filtering keeps no group, so no optimiser step is taken (updates=0)" if online_filtering
               else "the update moves the policy only through the KL term and weight decay, as EasyR1's does "
                    "(grpo.online_filtering=True skips such batches)")
    warnings.append(f"every group's {g} rewards are equal (rewards {shown}), so every advantage is 0 "
                    f"(zero_advantage_batch=1); {outcome}")
  return RolloutPlan(advantages, keep, record, warnings)


def rollout_step(config, setup: GRPOSetup, mesh, state: TrainState, prompts: Prompts, step: int):
  """Steps 1-5 of the module docstring for one rollout batch: returns the advanced state and the
  step's metrics record."""
  started = time.perf_counter()
  usable, prompt_warnings = check_prompts(prompts, config.data.max_seq_len)
  r = config.rollout
  rules = sharding_lib.as_rules(config.sharding.rules)
  replicated = sharding_lib.replicated(mesh)
  backbone = setup.backbone
  flat_pixels = prompts.pixel_values.reshape(-1, prompts.pixel_values.shape[-1])
  inputs = jax.device_put([prompts.input_ids, prompts.attention_mask, flat_pixels, prompts.image_grid_thw],
                          replicated)
  out = sampling.generate(backbone.model, state.params, *inputs, max_new_tokens=r.max_new_tokens,
                          temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, num_samples=r.num_samples,
                          rng=jax.random.fold_in(state.rng, step), eos_token_id=setup.eos_ids,
                          pad_token_id=backbone.pad_token_id, mesh=mesh, rules=rules,
                          suppress_token_ids=backbone.vision_token_ids)
  host = sharding_lib.host_array
  tokens, mask, sampled_logp = host(out.tokens), host(out.mask), host(out.logprobs)
  return learn_from_rollout(config, setup, mesh, state, prompts, tokens, mask, sampled_logp, step,
                            usable=usable, prompt_warnings=prompt_warnings, started=started,
                            rollout_seconds=time.perf_counter() - started)


def learn_from_rollout(config, setup: GRPOSetup, mesh, state: TrainState, prompts: Prompts, tokens, mask,
                       sampled_logp, step: int, *, usable=None, prompt_warnings=(), started=None,
                       rollout_seconds: float = 0.0):
  """Steps 2-5 on a rollout's host arrays (tokens / mask [B*G, N], sampled_logp f32 [B*G, N]):
  returns the advanced state and the step's record."""
  started = time.perf_counter() if started is None else started
  if usable is None:
    usable, prompt_warnings = check_prompts(prompts, config.data.max_seq_len)
  g, r = config.grpo, config.rollout
  backbone = setup.backbone
  host = sharding_lib.host_array
  targets = [t for t in prompts.targets for _ in range(r.num_samples)]
  scores = rewards.score_responses(tokens, mask, targets, backbone.tokenizer, backbone.action_vocab, g.reward)
  plan = plan_update(scores, tokens, mask, usable=usable, num_samples=r.num_samples,
                     online_filtering=g.online_filtering, eos_ids=setup.eos_ids, max_new_tokens=r.max_new_tokens)
  too_long, empty = prompts.left_out()
  record = {**plan.record, "prompts_too_long": float(too_long.sum()), "empty_targets": float(empty.sum()),
            "rollout_seconds": rollout_seconds}
  for message in [*prompt_warnings, *plan.warnings]:
    log.warning("GRPO rollout batch %d: %s", step, message)
  keep = plan.keep
  logprobs, update = setup.functions(int(np.prod(prompts.image_grid_thw[0, 1:])))
  updates = split_updates(training_rows(prompts, tokens, mask, plan.advantages, sampled_logp, keep, r.num_samples),
                          g.update_batch_size) if keep.size else []
  # Old (and reference) log-probs of every update before the first optimiser step changes params.
  batches = []
  gap_sum, gap_count = 0.0, 0.0
  for rows in updates:
    rollout_logp = rows.pop("rollout_logprobs")
    device_rows = sharding_lib.global_batch(_this_process_rows(rows), mesh)
    old = logprobs(state.params, device_rows)
    device_rows["old_logprobs"] = old
    if setup.ref_params is not None:
      device_rows["ref_logprobs"] = logprobs(setup.ref_params, device_rows)
    old_host = host(old)
    gap_sum += float((np.abs(old_host - rollout_logp) * rows["response_mask"]).sum())
    gap_count += float(rows["response_mask"].sum())
    batches.append(device_rows)
  collected = []
  for device_rows in batches:
    state, metrics = update(state, device_rows)
    collected.append(metrics)
  collected = jax.device_get(collected)
  record["updates"] = len(collected)
  record["updates_skipped"] = float(sum(m["update_skipped"] for m in collected))
  record["optimizer_steps"] = int(jax.device_get(state.step))
  # |rollout log-prob - recomputed old log-prob| per token: ~0 unless sampler and forward disagree.
  record["logprob_gap"] = gap_sum / max(gap_count, 1.0)
  for key in UPDATE_METRICS + ("lr",):
    if collected:
      record[key] = float(np.mean([m[key] for m in collected]))
  record["step_seconds"] = time.perf_counter() - started
  return state, record


def export_dir(config, workdir: str) -> str | None:
  target = config.export.hf_dir
  if target == "none":
    return None
  return target or os.path.join(workdir, "hf")


def export(config, workdir: str, params, backbone: backbone_lib.Backbone) -> dict[str, Any]:
  out_dir = export_dir(config, workdir)
  if out_dir is None:
    return {"hf_dir": None}
  host = sharding_lib.host_tree(params)
  if jax.process_index() == 0:
    backbone.export(host, out_dir)
    log.info("exported the GRPO policy to %s", out_dir)
  return {"hf_dir": out_dir}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs GRPO in `workdir` (auto-resumes); returns the last step's record and the export path."""
  mesh = mesh_lib.create_mesh(config.mesh.to_dict())
  check_config(config, sharding_lib.data_parallel_size(mesh))
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.processor_dir = data.processor_dir or config.model.init_dir
  handles = open_datasets(data, "train")
  # Too-long prompts are left out of the update instead of ending the run (`PromptCollate`).
  collate = PromptCollate(samples_lib.make_builder(data), data.max_seq_len)
  data_iter = iter(make_dataset(data, "train", handles=handles, collate_fn=collate))
  setup = build(config, mesh, data=data, handles=handles)
  step = lambda state, batch, n: rollout_step(config, setup, mesh, state, prompts_from_batch(batch), n)
  return loop.run(config, workdir, mesh, loop.Stage(
      name="grpo", state=setup.state, abstract_state=setup.abstract_state, step=step, data_iter=data_iter,
      num_steps=num_rollout_steps(config), metadata={"dataset_statistics": dataset_statistics(handles)},
      evaluators=evaluators.build(config, setup),
      export=lambda state: export(config, workdir, state.params, setup.backbone),
      progress_keys=("accuracy_reward", "format_reward", "kl")))
