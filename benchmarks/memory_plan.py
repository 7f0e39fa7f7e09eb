"""Memory and scale plan of the SFT and GRPO stages (Qwen2.5-VL 7B / 3B): bytes per device of the
train state, activations and rollout KV cache on a device mesh, computed from the real model,
configs, optimiser and sharding rules on an abstract mesh (no accelerator, no weights).

    .venv/bin/python benchmarks/memory_plan.py                     # the README's two tables
    .venv/bin/python benchmarks/memory_plan.py --detail            # + the activation terms
    .venv/bin/python benchmarks/memory_plan.py --gpu_gib=141 --gpus_per_node=8 --scale 16 32

Everything comes from `configs/{sft,grpo}.py:<variant>` as set up (param / compute dtype, remat,
`optim.frozen`, batch sizes, `rollout.*`), on a mesh (data, fsdp, tensor) resolved by
`parallel.mesh.resolve_mesh_shape` as the launcher does. Batch rows split over data x fsdp.

Per device:
  params      the policy parameters (param dtype), each array divided by the mesh axes its
              partition spec names: the train state is built by `jax.eval_shape` of the trainers'
              init (`model.init` + `TrainState.create` with `train.optimizer.make_optimizer`) and
              sharded by `parallel.sharding.logical_shardings` with `config.sharding.rules`, as
              `parallel.partitioned.state_shardings` does. Uneven dims are rounded up.
  grads       gradients in the param dtype. SFT: every parameter (the frozen vision tower's too:
              `apply_gradients` takes the norm of the whole tree). GRPO: x2 when an update has
              several micro-batches (the `lax.scan` accumulator + one micro-batch's gradients).
  optimizer   the real optax state (AdamW mu / nu for the trainable parameters; none for
              `optim.frozen`), sharded like the parameters.
  reference   GRPO's frozen initial policy for the KL term (`kl_coef > 0`): a second copy of params.
  activations traced, at the per-device batch (SFT: data.global_batch_size / (data x fsdp) rows of
              data.max_seq_len tokens; GRPO: grpo.micro_batch_size / (data x fsdp) rows of
              max_seq_len + max_new_tokens tokens):
                inputs  the batch arrays (GRPO: + the rows of every update of a rollout batch, held
                        from the log-prob pass to their update);
                saved   what autodiff keeps for the backward of the real loss: the residuals of
                        `jax.vjp(loss)` without the arguments (with per-layer remat: each decoder /
                        vision block's input, plus the lm_head and loss intermediates);
                work    max(one decoder layer's forward + backward: XLA's temporary bytes for it,
                        compiled alone on the CPU backend (with remat the layer's forward is
                        recomputed there; without, its intermediates are also in `saved`, so this
                        over-counts); the logits' cotangent B*T*V*(4 + compute bytes))
                        + with fsdp > 1 one layer's gathered weights and weight gradients
                        (2 x layer params x compute bytes).
              Per device = inputs + saved + work. The trace has no mesh, so with tensor > 1 this
              is an upper bound (heads / mlp / vocab parts split over tensor are counted whole).
  kv cache    GRPO: the rollout's `KVCache` (`jax.eval_shape` of `KVCache.init`, the model's layers,
              heads and compute dtype) for this device's rows, data.global_batch_size x
              rollout.num_samples / (data x fsdp), of max_seq_len + max_new_tokens - 1 slots
              (`sampling.generate` prefills the prompts, then repeats the cache per sample).
              SFT: the held-out greedy eval's cache, prompts taken as long as data.max_seq_len
              (an upper bound).
              The rollout's working set next to it: max(the prefill of one decoder layer over the
              cache, XLA's temporary bytes as above; 3 x rows x vocab x 4 bytes of decode logits /
              noise / log-probs) + the gathered layer with fsdp > 1.
  total       params + optimizer + reference + max(grads + activations, kv cache + rollout work):
              gradients and activations live inside a train step, the cache inside a rollout.

Inter-node traffic (scale table), per device and optimizer step, ring collectives, in the
compute dtype: an fsdp group moves 3 x P x (f-1)/f per forward+backward pass (gather the weights
forward and backward, reduce-scatter the gradients; GRPO adds 2 forward gathers per micro-batch
for the old and reference log-probs) and the data axis all-reduces each 1/f gradient shard,
2 x P/f x (d-1)/d per pass; GRPO does both once per micro-batch. A group counts when it spans
nodes (devices are numbered node by node and the mesh is (data, fsdp, tensor) row-major, so fsdp
x tensor <= GPUs per node keeps an fsdp group inside a node).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.extend import core as jex_core
from jax.sharding import AbstractMesh

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from roboalign_jax.config.overrides import load_config_file  # noqa: E402
from roboalign_jax.fast.vocab import ActionVocab, action_token_strings  # noqa: E402
from roboalign_jax.models.qwen2_5_vl import text as text_lib  # noqa: E402
from roboalign_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig  # noqa: E402
from roboalign_jax.models.qwen2_5_vl.kv_cache import KVCache  # noqa: E402
from roboalign_jax.models.qwen2_5_vl.model import Qwen2_5_VL  # noqa: E402
from roboalign_jax.models.qwen2_5_vl.vocab_extension import padded_vocab_size  # noqa: E402
from roboalign_jax.models.qwen_vl_checkpoint import dummy_inputs  # noqa: E402
from roboalign_jax.parallel import mesh as mesh_lib  # noqa: E402
from roboalign_jax.parallel import sharding as sharding_lib  # noqa: E402
from roboalign_jax.rl import grpo as grpo_lib  # noqa: E402
from roboalign_jax.train import grpo as grpo_train  # noqa: E402
from roboalign_jax.train import sft as sft_train  # noqa: E402
from roboalign_jax.train.optimizer import make_optimizer  # noqa: E402
from roboalign_jax.train.train_state import TrainState  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"sft": "configs/sft.py", "grpo": "configs/grpo.py"}
GIB = 1024 ** 3
# Tokens of the Qwen2.5-VL-Instruct tokenizer (3B and 7B): <action_start> is added as id 151665
# (tests/test_fast_vocab.py). Loading the HF checkpoint grows the vocabulary to hold the action
# tokens (`vocab_extension.extend_vocabulary`).
QWEN2_5_VL_TOKENIZER_LEN = 151665
# launch/slurm/train.sbatch lets XLA take this fraction of each GPU.
XLA_MEM_FRACTION = 0.92
# Config fields that only say how a batch is split or evaluated, not what one device computes.
BATCH_SPLITTING = ("mesh.", "evals.", "grpo.micro_batch_size", "model.per_image_vision", "sft.images_per_batch")
S = jax.ShapeDtypeStruct


def extended_vocab_size(vocab_size: int, tokenizer_len: int = QWEN2_5_VL_TOKENIZER_LEN) -> int:
  """The vocabulary `extend_vocabulary` / `random_init` give a model whose tokenizer has
  `tokenizer_len` tokens before the action tokens are added."""
  return padded_vocab_size(vocab_size, tokenizer_len + len(action_token_strings()))


def load_config(stage: str, variant: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(REPO, CONFIGS[stage]) + ":" + variant)
  for key, value in (overrides or {}).items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def make_model(config: ml_collections.ConfigDict, vocab_size: int | None = None) -> Qwen2_5_VL:
  """The stage's model as `backbone.load` builds it: dtypes and remat from `config.model`,
  the vocabulary extended with the action tokens."""
  param_dtype = jnp.dtype(config.model.param_dtype or "float32")
  compute = jnp.dtype(config.model.compute_dtype) if config.model.compute_dtype else param_dtype
  variant = config.model.get("variant") or config.variant
  mc = Qwen2_5_VLConfig.from_variant(variant, dtype=compute, remat=bool(config.model.remat))
  vocab = vocab_size or extended_vocab_size(mc.text.vocab_size)
  mc = mc.replace(text=dataclasses.replace(mc.text, vocab_size=vocab))
  return Qwen2_5_VL(mc, param_dtype=param_dtype)


# ---- train state ---------------------------------------------------------------------------------
def boxed_state(config: ml_collections.ConfigDict, model: Qwen2_5_VL):
  """`jax.eval_shape` of the trainer's state init (boxed with logical axis names), as
  `partitioned.state_shardings(init_state, ...)` sees it in `train/sft.py` / `train/grpo.py`."""
  dummy = dummy_inputs(model.config)
  abstract_params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy)))["params"]
  steps = int(config.optim.get("accumulate_steps", 1))  # the schedule's length does not change shapes
  tx, _ = make_optimizer(config.optim, steps, params=abstract_params)

  def init_state(rng):
    return TrainState.create(model.init(rng, *dummy)["params"], tx, jax.random.fold_in(rng, 1))
  return jax.eval_shape(init_state, jax.random.PRNGKey(config.seed)), abstract_params


def abstract_mesh(config: ml_collections.ConfigDict, num_devices: int) -> AbstractMesh:
  return AbstractMesh(mesh_lib.resolve_mesh_shape(config.mesh.to_dict(), num_devices), mesh_lib.MESH_AXES)


def shard_bytes(shape, dtype, spec, mesh_shape) -> int:
  """Bytes of one device's shard: each dim divided (rounded up) by the mesh axes it is split over."""
  dims = list(shape)
  for i, part in enumerate(spec):
    if part is not None:
      axes = part if isinstance(part, tuple) else (part,)
      dims[i] = -(-dims[i] // math.prod(mesh_shape[a] for a in axes))
  return int(math.prod(dims)) * jnp.dtype(dtype).itemsize


def tree_bytes(tree, shardings=None) -> int:
  """Per-device bytes of an abstract tree (whole arrays when `shardings` is None)."""
  leaves = jax.tree.leaves(tree)
  if shardings is None:
    return sum(int(math.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in leaves)
  return sum(shard_bytes(x.shape, x.dtype, s.spec, dict(s.mesh.shape))
             for x, s in zip(leaves, jax.tree.leaves(shardings)))


def uneven_arrays(tree, shardings) -> list[str]:
  """Paths of arrays with a dim the mesh does not divide (padded shards)."""
  out = []
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  for (path, x), s in zip(flat, jax.tree.leaves(shardings)):
    for dim, part in zip(x.shape, s.spec):
      axes = () if part is None else (part if isinstance(part, tuple) else (part,))
      if dim % math.prod(dict(s.mesh.shape)[a] for a in axes):
        out.append(jax.tree_util.keystr(path))
  return out


# ---- activations ---------------------------------------------------------------------------------
def residual_bytes(fn, *args) -> int:
  """Bytes autodiff saves for the backward of `fn(*args)` (a scalar loss), not counting the
  arguments themselves: the residuals of `jax.vjp`, read from its jaxpr."""
  closed, shapes = jax.make_jaxpr(lambda *a: jax.vjp(fn, *a), return_shape=True)(*args)
  jaxpr = closed.jaxpr
  count = len(jax.tree.leaves(shapes[1]))
  skip = set(jaxpr.invars) | set(jaxpr.constvars)
  seen, total = set(), 0
  for v in jaxpr.outvars[len(jaxpr.outvars) - count:]:
    if isinstance(v, jex_core.Literal) or v in skip or v in seen:  # constants, arguments, repeats
      continue
    seen.add(v)
    total += int(math.prod(v.aval.shape)) * v.aval.dtype.itemsize
  return total


def layer_work_bytes(model: Qwen2_5_VL, rows: int, length: int, cache_length: int | None = None) -> int:
  """XLA's temporary bytes (`memory_analysis` of the compiled program, CPU backend) of one decoder
  layer on rows x length tokens: forward + backward (the step a remat'ed layer takes in the
  backward pass), or, with `cache_length`, the forward over a KV cache of that many slots (the
  rollout's prefill). Only this one layer is compiled, so it takes seconds."""
  c, t = model.config, model.config.text
  layer = text_lib.DecoderLayer(t, c.dtype, model.param_dtype)
  slots = cache_length or length
  x = S((rows, length, t.hidden_size), c.dtype)
  rope = S((rows, length, t.head_dim), jnp.float32)
  mask = S((rows, 1, length, slots), jnp.bool_)
  if cache_length:
    cache = jax.eval_shape(lambda: KVCache.init(rows, slots, 1, t.num_key_value_heads, t.head_dim, c.dtype))
    kv = (cache.keys[0], cache.values[0])
    params = jax.eval_shape(lambda *a: nn.unbox(layer.init(jax.random.key(0), *a, 0)), x, rope, rope, mask, kv)
    step = jax.jit(lambda p, x, r, m, kv: layer.apply(p, x, r, r, m, kv, 0))
    compiled = step.lower(params, x, rope, mask, kv).compile()
  else:
    params = jax.eval_shape(lambda *a: nn.unbox(layer.init(jax.random.key(0), *a)), x, rope, rope, mask)
    loss = lambda p, x, r, m: layer.apply(p, x, r, r, m)[0].astype(jnp.float32).sum()
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x, rope, mask).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def frame_patches(config) -> int:
  """Patches per image (h x w of the grid) at data.image_size."""
  h, w = config.data.image_size
  return (h // 14) * (w // 14)


def sft_images(config, rows: int) -> int:
  """Images in `rows` rows: `sft.images_per_batch` shared out, or one per camera (0 = the next
  multiple of the batch size)."""
  per_row = config.sft.images_per_batch / config.data.global_batch_size if config.sft.images_per_batch else len(
      config.data.cameras)
  return max(1, math.ceil(rows * per_row))


def sft_batch(config, rows: int, images: int):
  """The abstract SFT batch of `rows` rows (`sft_batches.shape_batch`'s arrays)."""
  t = int(config.data.max_seq_len)
  if t <= 0:
    raise ValueError("config.data.max_seq_len must be set (> 0) to plan SFT memory")
  fp = frame_patches(config)
  return dict(input_ids=S((rows, t), jnp.int32), attention_mask=S((rows, t), jnp.int32),
              loss_mask=S((rows, t), jnp.int32), pixel_values=S((images * fp, 1176), jnp.float32),
              image_grid_thw=S((images, 3), jnp.int32)), fp


def grpo_rows(config, rows: int):
  """One micro-batch of update rows (`grpo.training_rows` + the recomputed log-probs)."""
  t, n, fp = int(config.data.max_seq_len), int(config.rollout.max_new_tokens), frame_patches(config)
  f32 = jnp.float32
  return dict(input_ids=S((rows, t + n), jnp.int32), attention_mask=S((rows, t + n), jnp.int32),
              pixel_values=S((rows, fp, 1176), f32), image_grid_thw=S((rows, 3), jnp.int32),
              response_mask=S((rows, n), f32), advantages=S((rows,), f32), old_logprobs=S((rows, n), f32),
              ref_logprobs=S((rows, n), f32)), fp


@functools.lru_cache(maxsize=None)
def _saved(stage: str, variant: str, rows: int, images: int, overrides: tuple, vocab_size: int | None) -> int:
  config = load_config(stage, variant, dict(overrides))
  model = make_model(config, vocab_size)
  params = boxed_state(config, model)[1]
  if stage == "sft":
    batch, fp = sft_batch(config, rows, images)
    # The action tokens follow the tokenizer's own (<action_start>, <action_end>, <action_0>, ...).
    action_vocab = ActionVocab(first_action_token_id=QWEN2_5_VL_TOKENIZER_LEN + 2)
    loss = lambda p, b: sft_train.sft_loss(p, model, b, action_vocab=action_vocab, frame_patches=fp)[0]
  else:
    batch, fp = grpo_rows(config, rows)
    g = config.grpo
    loss_config = grpo_lib.GRPOLossConfig(g.clip_low, g.clip_high, g.clip_dual, g.kl_coef)

    def loss(p, mb):  # `train/grpo.py` update_step's micro_loss
      logp = grpo_train.sequence_logprobs(p, model, mb, prompt_len=int(config.data.max_seq_len),
                                          temperature=float(config.rollout.temperature), frame_patches=fp)
      return grpo_lib.policy_loss(logp, mb["old_logprobs"], mb["ref_logprobs"] if g.kl_coef > 0 else None,
                                  mb["advantages"], mb["response_mask"], loss_config)[0]
  return residual_bytes(loss, params, batch)


@functools.lru_cache(maxsize=None)
def _layer(stage: str, variant: str, rows: int, length: int, cache_length: int | None, overrides: tuple,
           vocab_size: int | None) -> int:
  return layer_work_bytes(make_model(load_config(stage, variant, dict(overrides)), vocab_size), rows, length,
                          cache_length)


# ---- the plan ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
  stage: str
  variant: str
  mesh: dict[str, int]
  params: int
  grads: int
  optimizer: int
  reference: int
  activations: int
  kv_cache: int
  rollout_work: int
  other: int                 # step counter, RNG key
  model_bytes: int           # the whole model in the compute dtype (what fsdp gathers)
  passes: int                # forward + backward passes per optimizer step (GRPO: micro-batches)
  detail: dict[str, int]     # the activation terms
  uneven: list[str]          # arrays whose dims the mesh does not divide

  @property
  def total(self) -> int:
    state = self.params + self.optimizer + self.reference + self.other
    return state + max(self.grads + self.activations, self.kv_cache + self.rollout_work)

  def mesh_text(self) -> str:
    return ", ".join(f"{k}={v}" for k, v in self.mesh.items() if v > 1 or k == "data") or "1 device"


@functools.lru_cache(maxsize=None)
def _state(stage: str, variant: str, overrides: tuple, vocab_size: int | None):
  config = load_config(stage, variant, dict(overrides))
  model = make_model(config, vocab_size)
  return boxed_state(config, model)[0], model


def plan(stage: str, variant: str, num_devices: int, mesh: dict | None = None, *, overrides: dict | None = None,
         vocab_size: int | None = None, activations: bool = True) -> Plan:
  """Per-device bytes of `stage` (sft | grpo) at `variant` on `num_devices` devices.

  mesh: config.mesh sizes (default: the config's, data=-1); overrides: config fields set as the
  launcher's `--config.a.b=value` would; vocab_size: the model's vocabulary (default: Qwen2.5-VL's
  tokenizer extended with the action tokens); activations=False: the train state only (no traces,
  activations and KV cache 0)."""
  overrides = dict(overrides or {})
  # Model, state and traces depend on neither the mesh nor the batch-splitting fields (the traces
  # get the per-device rows): cached without them.
  key = tuple(sorted((k, v) for k, v in overrides.items() if not k.startswith(BATCH_SPLITTING)))
  if mesh:
    overrides.update({f"mesh.{k}": v for k, v in mesh.items()})
  config = load_config(stage, variant, overrides)
  amesh = abstract_mesh(config, num_devices)
  ways = amesh.shape["data"] * amesh.shape["fsdp"]
  boxed, model = _state(stage, variant, key, vocab_size)
  shardings = sharding_lib.logical_shardings(boxed, amesh, sharding_lib.as_rules(config.sharding.rules))
  state = nn.unbox(boxed)
  params = tree_bytes(state.params, shardings.params)
  optimizer = tree_bytes(state.opt_state, shardings.opt_state)
  other = tree_bytes((state.step, state.rng), (shardings.step, shardings.rng))
  c = model.config
  cbytes = jnp.dtype(c.dtype).itemsize
  vocab = c.text.vocab_size
  param_bytes = jnp.dtype(model.param_dtype).itemsize
  model_bytes = tree_bytes(state.params) // param_bytes * cbytes
  layer_params = tree_bytes(state.params["language_model"]["layers_0"]) // param_bytes
  gathered = 2 * layer_params * cbytes if amesh.shape["fsdp"] > 1 else 0

  # The per-device rows (checked only when activations are asked for: the state does not need them).
  split = _rows if activations else lambda batch, ways, name: -(-batch // ways)
  if stage == "sft":
    rows = split(config.data.global_batch_size, ways, "data.global_batch_size")
    t = int(config.data.max_seq_len)
    images = sft_images(config, rows)
    inputs = tree_bytes(sft_batch(config, rows, images)[0])
    grads, reference, passes = params, 0, 1
    # Held-out greedy decoding (`sft_eval.evaluate`): one sample per prompt.
    prompts, samples = int(config.evals.heldout.batch_size), 1
    prompt, new = t, int(config.evals.heldout.max_new_tokens)
    length = t
  else:
    g = config.grpo
    rows = split(g.micro_batch_size, ways, "grpo.micro_batch_size")
    prompt, new = int(config.data.max_seq_len), int(config.rollout.max_new_tokens)
    images = rows
    # Every update's rows stay on the devices from the log-prob pass to their update.
    inputs = tree_bytes(grpo_rows(config, g.update_batch_size)[0]) * grpo_train.updates_per_rollout(config) // ways
    passes = g.update_batch_size // g.micro_batch_size
    grads = params * (2 if passes > 1 else 1)
    reference = params if g.kl_coef > 0 else 0
    prompts, samples = int(config.data.global_batch_size), int(config.rollout.num_samples)
    length = prompt + new
  # `sampling.generate`: the prompts are prefilled split over data x fsdp when they divide (else on
  # every device), then the cache is repeated per sample and its rows split.
  prefill_rows = prompts // ways if prompts % ways == 0 else prompts
  cache_rows = -(-prompts * samples // ways)
  detail = dict(rows_per_device=rows, tokens_per_row=length, rollout_rows_per_device=cache_rows,
                inputs=0, saved=0, layer=0, logits_grad=0, gathered=gathered, prefill_layer=0)
  act = kv_cache = rollout_work = 0
  if activations:
    saved = _saved(stage, variant, rows, images, key, vocab_size)
    layer = _layer(stage, variant, rows, length, None, key, vocab_size)
    logits_grad = rows * length * vocab * (4 + cbytes)
    act = inputs + saved + max(layer, logits_grad) + gathered
    cache = jax.eval_shape(lambda: KVCache.init(cache_rows, prompt + new - 1, c.text.num_hidden_layers,
                                                c.text.num_key_value_heads, c.text.head_dim, c.dtype))
    kv_cache = tree_bytes(cache)
    prefill = _layer(stage, variant, prefill_rows, prompt, prompt + new - 1, key, vocab_size)
    rollout_work = max(prefill, 3 * cache_rows * vocab * 4) + gathered
    detail.update(inputs=inputs, saved=saved, layer=layer, logits_grad=logits_grad, prefill_layer=prefill)
  return Plan(stage, variant, dict(amesh.shape), params, grads, optimizer, reference, act, kv_cache,
              rollout_work, other, model_bytes, passes, detail, uneven_arrays(state, shardings))


def _rows(batch: int, ways: int, name: str) -> int:
  if batch % ways:
    raise ValueError(f"config.{name}={batch} does not split over data x fsdp = {ways} devices")
  return batch // ways


# ---- scale: meshes, flags, traffic ---------------------------------------------------------------
def required_overrides(stage: str, variant: str, ways: int, processes: int) -> dict[str, Any]:
  """Config fields the trainers' checks need changed on data x fsdp = `ways` with `processes`
  hosts (the smallest change that keeps the per-device batch)."""
  config = load_config(stage, variant)
  out: dict[str, Any] = {}
  if stage == "sft":
    if config.evals.heldout.batch_size % ways:  # sampling.generate splits rows over data x fsdp
      out["evals.heldout.batch_size"] = math.lcm(config.evals.heldout.batch_size, ways)
    if processes > 1:  # sft.make_train_data / build's step: every process builds the same shapes
      if not config.sft.images_per_batch:
        out["sft.images_per_batch"] = config.data.global_batch_size * len(config.data.cameras)
      if config.model.per_image_vision == "auto":
        out["model.per_image_vision"] = "on"
  else:
    g = config.grpo
    if g.micro_batch_size % ways:  # grpo.check_config
      out["grpo.micro_batch_size"] = math.lcm(g.micro_batch_size, ways)
    v = config.evals.validation
    if (v.batch_size * v.num_samples) % ways:
      out["evals.validation.batch_size"] = math.lcm(v.batch_size * v.num_samples, ways) // v.num_samples
  return out


def traffic(p: Plan, gpus_per_node: int) -> float:
  """Bytes per device per optimizer step over inter-node links (see the module docstring)."""
  f, d, t = p.mesh["fsdp"], p.mesh["data"], p.mesh["tensor"]
  nodes = max(1, f * d * t // gpus_per_node)
  fsdp_pass = 3 * p.model_bytes * (f - 1) / f
  data_pass = 2 * p.model_bytes / f * (d - 1) / d
  # GRPO: the old and reference log-probs are forward passes over the same micro-batches.
  forward_only = (2 if p.reference else 1) * p.passes * p.model_bytes * (f - 1) / f if p.stage == "grpo" else 0
  fsdp_spans = f * t > gpus_per_node
  data_spans = nodes > 1 and d > 1
  return (fsdp_pass * p.passes + forward_only) * fsdp_spans + data_pass * p.passes * data_spans


def candidate_meshes(num_gpus: int) -> list[dict[str, int]]:
  return [dict(data=num_gpus // f, fsdp=f, tensor=1) for f in range(1, num_gpus + 1) if num_gpus % f == 0]


def mesh_flags(mesh: dict[str, int], extra: dict[str, Any]) -> str:
  flags = [f"--config.mesh.{k}={v}" for k, v in mesh.items() if k != "tensor" or v > 1]
  return " ".join(flags + [f"--config.{k}={v}" for k, v in extra.items()])


def recommend(stage: str, variant: str, num_gpus: int, gpus_per_node: int, budget: int):
  """(best plan, its flags, its traffic, every candidate's (plan, traffic)): among the meshes
  that fit `budget` bytes, the one with the least inter-node traffic, then the smallest total."""
  rows = []
  nodes = max(1, num_gpus // gpus_per_node)
  for mesh in candidate_meshes(num_gpus):
    extra = required_overrides(stage, variant, mesh["data"] * mesh["fsdp"], nodes)
    try:
      p = plan(stage, variant, num_gpus, mesh, overrides=extra)
    except ValueError:  # a batch that does not split this many ways
      continue
    rows.append((p, traffic(p, gpus_per_node), extra))
  fitting = [r for r in rows if r[0].total <= budget]
  best = min(fitting, key=lambda r: (r[1], r[0].total)) if fitting else min(rows, key=lambda r: r[0].total)
  return best, rows


# ---- printing ------------------------------------------------------------------------------------
def gib(x: float) -> str:
  return f"{x / GIB:.1f}"


def state_table(variants, num_gpus: int, gpu_bytes: int) -> list[str]:
  lines = ["| run | mesh | params | grads | optimizer | reference | activations | KV cache | total / device | "
           f"headroom of {gpu_bytes / GIB:.0f} GiB |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for variant in variants:
    for stage in ("sft", "grpo"):
      for label, mesh in (("default: ", None), ("", dict(data=-1, fsdp=num_gpus, tensor=1))):
        p = plan(stage, variant, num_gpus, mesh)
        lines.append(f"| {variant.upper()} {stage.upper()} | {label}{p.mesh_text()} | {gib(p.params)} | {gib(p.grads)} | "
                     f"{gib(p.optimizer)} | {gib(p.reference)} | {gib(p.activations)} | {gib(p.kv_cache)} | "
                     f"{gib(p.total)} | {gib(gpu_bytes - p.total)} |")
  return lines


def scale_table(variant: str, gpu_counts, gpus_per_node: int, gpu_bytes: int) -> list[str]:
  budget = int(gpu_bytes * XLA_MEM_FRACTION)
  lines = ["| GPUs | run | recommended mesh | flags | total / device | headroom | inter-node GB / step | "
           "fsdp over all GPUs: total, inter-node GB / step | reason |",
           "| ---: | --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
  for n in gpu_counts:
    for stage in ("sft", "grpo"):
      (p, moved, extra), rows = recommend(stage, variant, n, gpus_per_node, budget)
      wide = [r for r in rows if r[0].mesh["fsdp"] == n]
      alt = f"{gib(wide[0][0].total)} GiB, {wide[0][1] / 1e9:.0f} GB" if wide else "-"
      f = p.mesh["fsdp"]
      if p.total > budget:
        reason = "nothing fits; the smallest per-device total"
      elif f <= gpus_per_node:
        reason = f"fsdp gathers stay on NVLink; only 1/{f} gradient shards are all-reduced across nodes"
      else:
        reason = "the only fitting meshes put fsdp across nodes"
      lines.append(f"| {n} | {variant.upper()} {stage.upper()} | {p.mesh_text()} | `{mesh_flags(p.mesh, extra)}` | "
                   f"{gib(p.total)} GiB | {gib(gpu_bytes - p.total)} GiB | {moved / 1e9:.1f} | {alt} | {reason} |")
  return lines


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--gpu_gib", type=float, default=80.0, help="memory per GPU")
  ap.add_argument("--gpus", type=int, default=8, help="devices of the first table")
  ap.add_argument("--gpus_per_node", type=int, default=8)
  ap.add_argument("--scale", type=int, nargs="*", default=[16, 64], help="GPU counts of the scale table (7B)")
  ap.add_argument("--variants", nargs="*", default=["7b", "3b"])
  ap.add_argument("--detail", action="store_true", help="print the activation and rollout terms too")
  args = ap.parse_args()
  gpu_bytes = int(args.gpu_gib * GIB)
  print(f"Per device, GiB, on {args.gpus} x {args.gpu_gib:.0f} GiB (configs/sft.py, configs/grpo.py as set up):\n")
  print("\n".join(state_table(args.variants, args.gpus, gpu_bytes)))
  print(f"\nlaunch/slurm/train.sbatch gives XLA {XLA_MEM_FRACTION} of each GPU "
        f"({XLA_MEM_FRACTION * args.gpu_gib:.1f} GiB): a total above that does not fit.")
  if args.scale:
    print(f"\n7B on {' / '.join(map(str, args.scale))} GPUs, {args.gpus_per_node} per node: of the meshes "
          f"(data, fsdp) whose total fits, the one with the least inter-node traffic per optimizer step:\n")
    print("\n".join(scale_table("7b", args.scale, args.gpus_per_node, gpu_bytes)))
    print("\nRun it with `CONFIG=configs/<stage>.py:7b,... WORKDIR=... sbatch --nodes=<GPUs / "
          f"{args.gpus_per_node}> launch/slurm/train.sbatch <flags>`. Several hosts need fixed SFT shapes "
          "(`sft.images_per_batch`, `model.per_image_vision` on or off): `on` needs one image size per batch, "
          "`off` attends over all of a batch's patches at once, which this plan does not count.")
  if args.detail:
    print("\nactivation terms (GiB) and rollout:")
    for variant in args.variants:
      for stage in ("sft", "grpo"):
        p = plan(stage, variant, args.gpus, dict(data=-1, fsdp=args.gpus, tensor=1))
        d = p.detail
        print(f"  {variant} {stage}: {d['rows_per_device']} rows x {d['tokens_per_row']} tokens; inputs "
              f"{gib(d['inputs'])}, saved {gib(d['saved'])}, one layer {gib(d['layer'])}, logits cotangent "
              f"{gib(d['logits_grad'])}, gathered layer {gib(d['gathered'])}; rollout rows "
              f"{d['rollout_rows_per_device']}, prefill layer {gib(d['prefill_layer'])}, rollout work "
              f"{gib(p.rollout_work)}" + (f"; uneven: {p.uneven}" if p.uneven else ""))


if __name__ == "__main__":
  main()
