"""GR00T N1.5 checkpoint I/O for the action head: safetensors (single file or sharded with
`model.safetensors.index.json`) <-> our parameter tree, never via pickle.

A GR00T checkpoint directory holds config.json (whose "action_head_cfg" gives the head's
shapes) and the whole policy's tensors; we read only `action_head.*` (and
`backbone.eagle_linear.*` when `backbone_cfg.project_to_dim` is set: GR00T's projection in
front of the head, our `backbone_feature_dim`). Other tensors are never loaded into memory.
`export_gr00t` writes the same layout (fp32 torch-style tensors, [out, in] Linear weights), which
GR00T's FlowmatchingActionHead loads with `load_state_dict(strict=True)`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from roboalign_jax.models import safetensors_io
from roboalign_jax.models.action_head.config import ActionHeadConfig
from roboalign_jax.models.action_head.model import FlowMatchingHead

HEAD_PREFIX = "action_head."
PROJECTION_PREFIX = "backbone.eagle_linear."

# Our module name -> GR00T's, where they differ (Flax names cannot hold GR00T's dotted indices).
_MODULE_NAMES = {"to_out": "to_out.0", "ff_in": "ff.net.0.proj", "ff_out": "ff.net.2"}


# ---- parameters -----------------------------------------------------------------------------------
def dummy_inputs(config: ActionHeadConfig, batch: int = 1, vl_tokens: int = 2):
  """Zero inputs that touch every parameter: (vl_features, state, x_t, bucket, embodiment_id)."""
  return (jnp.zeros((batch, vl_tokens, config.feature_dim), jnp.float32),
          jnp.zeros((batch, 1, config.max_state_dim), jnp.float32),
          jnp.zeros((batch, config.action_horizon, config.action_dim), jnp.float32),
          jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.int32))


def abstract_params(head: FlowMatchingHead) -> Any:
  """Parameter shapes boxed with their logical axis names, without allocating anything."""
  return jax.eval_shape(lambda: head.init(jax.random.key(0), *dummy_inputs(head.config)))["params"]


def init_params(config: ActionHeadConfig, rng: jax.Array) -> dict:
  """Fresh parameters (GR00T's init distributions), unboxed, in `config.param_dtype`."""
  head = FlowMatchingHead(config)
  return nn.unbox(jax.jit(head.init)(rng, *dummy_inputs(config))["params"])


def num_params(config: ActionHeadConfig) -> int:
  """Parameter count of a head with this config (computed from shapes only)."""
  shapes = nn.unbox(abstract_params(FlowMatchingHead(config)))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


# ---- names ------------------------------------------------------------------------------------------
def gr00t_name(path: tuple[str, ...]) -> str:
  """Our parameter path -> GR00T tensor name (`action_head.` or `backbone.eagle_linear.` prefix)."""
  *modules, leaf = path
  if modules == ["eagle_linear"]:
    return PROJECTION_PREFIX + ("weight" if leaf == "kernel" else leaf)
  if not modules:  # future_tokens / position_embedding tables: nn.Embedding in GR00T
    return f"{HEAD_PREFIX}{leaf}.weight"
  parts = []
  for m in modules:
    block = re.fullmatch(r"transformer_blocks_(\d+)", m)
    parts.append(f"transformer_blocks.{block.group(1)}" if block else _MODULE_NAMES.get(m, m))
  parts.append({"kernel": "weight", "scale": "weight"}.get(leaf, leaf))
  return HEAD_PREFIX + ".".join(parts)


def _to_ours(path, value: np.ndarray) -> np.ndarray:
  return value.T if path[-1] == "kernel" else value  # torch Linear [out, in] -> [in, out]


def _to_gr00t(path, value: np.ndarray) -> np.ndarray:
  return value.T if path[-1] == "kernel" else value


# ---- reading ----------------------------------------------------------------------------------------
def read_config(ckpt_dir: str) -> tuple[ActionHeadConfig, dict]:
  """(head config, the whole config.json dict) of a GR00T checkpoint directory."""
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"checkpoint directory {ckpt_dir!r} not found")
  path = os.path.join(ckpt_dir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path!r} not found; expected a GR00T checkpoint's config.json with 'action_head_cfg'")
  with open(path) as f:
    try:
      full = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(full, dict) or "action_head_cfg" not in full:
    keys = sorted(full) if isinstance(full, dict) else type(full).__name__
    raise ValueError(f"{path}: no 'action_head_cfg'; expected a GR00T N1.5 config.json (keys found: {keys})")
  config = ActionHeadConfig.from_gr00t_dict(full["action_head_cfg"], source=f"{path} action_head_cfg")
  return config, full


def params_from_gr00t_tensors(tensors: dict[str, np.ndarray], config: ActionHeadConfig, dtype=jnp.float32,
                              source: str = "checkpoint") -> dict:
  """Maps GR00T-named tensors onto our tree; every parameter must be present with its shape and
  no `action_head.*` tensor may be left over (that would mean the config does not match)."""
  expected = traverse_util.flatten_dict(nn.unbox(abstract_params(FlowMatchingHead(config))))
  by_name = {gr00t_name(p): p for p in expected}
  flat, unexpected = {}, []
  for name, value in tensors.items():
    path = by_name.get(name)
    if path is None:
      if name.startswith(HEAD_PREFIX):
        unexpected.append(name)
      continue
    value = _to_ours(path, np.asarray(value))
    if value.shape != expected[path].shape:
      want = _to_gr00t(path, np.empty(expected[path].shape, np.int8)).shape
      raise ValueError(f"{source}: tensor {name!r} has shape {tuple(np.shape(tensors[name]))}, but the config "
                       f"(action_head_cfg) expects {tuple(want)}")
    flat[path] = jnp.asarray(value.astype(np.float32), dtype=dtype)
  missing = [gr00t_name(p) for p in expected if p not in flat]
  if missing:
    raise ValueError(f"{source}: missing {len(missing)} of the head's {len(expected)} tensors, e.g. {missing[:5]} "
                     f"(expected GR00T N1.5 names under {HEAD_PREFIX!r})")
  if unexpected:
    raise ValueError(f"{source}: {len(unexpected)} {HEAD_PREFIX}* tensors are not in a head of this config "
                     f"(action_head_cfg), e.g. {unexpected[:5]}")
  return traverse_util.unflatten_dict(flat)


def load_gr00t(ckpt_dir: str, dtype=jnp.float32, compute_dtype=None) -> tuple[FlowMatchingHead, dict]:
  """(head, params) from a GR00T N1.5 checkpoint directory.

  dtype: parameter dtype (released weights are bf16 on disk; fp32 by default here);
  compute_dtype: activation dtype (default: dtype).
  """
  config, full = read_config(ckpt_dir)
  project_to_dim = (full.get("backbone_cfg") or {}).get("project_to_dim")
  projection = None
  if project_to_dim is not None:
    if int(project_to_dim) != config.backbone_embedding_dim:
      raise ValueError(f"{ckpt_dir}/config.json: backbone_cfg.project_to_dim {project_to_dim} != "
                       f"action_head_cfg.backbone_embedding_dim {config.backbone_embedding_dim}; the projection "
                       "must produce the width the head reads")
    with_projection = lambda n: n.startswith(HEAD_PREFIX) or n.startswith(PROJECTION_PREFIX)
    tensors = safetensors_io.read_tensors(ckpt_dir, with_projection)
    weight = tensors.get(PROJECTION_PREFIX + "weight")
    if weight is None or weight.ndim != 2:
      raise ValueError(f"{ckpt_dir}: backbone_cfg.project_to_dim is {project_to_dim} but the checkpoint has no 2-D "
                       f"{PROJECTION_PREFIX}weight [project_to_dim, feature width]")
    projection = int(weight.shape[1])
  else:
    tensors = safetensors_io.read_tensors(ckpt_dir, lambda n: n.startswith(HEAD_PREFIX))
  if not tensors:
    raise ValueError(f"{ckpt_dir}: no {HEAD_PREFIX}* tensors in its safetensors files; expected a GR00T N1.5 "
                     "checkpoint holding the action head")
  config = config.replace(backbone_feature_dim=projection, dtype=compute_dtype or dtype, param_dtype=dtype)
  params = params_from_gr00t_tensors(tensors, config, dtype=dtype, source=ckpt_dir)
  return FlowMatchingHead(config), params


# ---- writing ----------------------------------------------------------------------------------------
def gr00t_tensors_from_params(params: dict) -> dict[str, np.ndarray]:
  flat = traverse_util.flatten_dict(nn.unbox(params))
  return {gr00t_name(path): np.ascontiguousarray(_to_gr00t(path, np.asarray(jax.device_get(v), np.float32)))
          for path, v in flat.items()}


def export_gr00t(params: dict, config: ActionHeadConfig, out_dir: str, max_shard_bytes: int = 5 * 1024 ** 3) -> None:
  """Writes config.json ({"action_head_cfg", "backbone_cfg": {"project_to_dim"}, ...}) and fp32
  safetensors in GR00T's layout, sharded with an index above `max_shard_bytes`."""
  expected = traverse_util.flatten_dict(nn.unbox(abstract_params(FlowMatchingHead(config))))
  got = traverse_util.flatten_dict(nn.unbox(params))
  if set(expected) != set(got):
    diff = sorted("/".join(p) for p in set(expected) ^ set(got))[:5]
    raise ValueError(f"export_gr00t: params do not match the config's head, e.g. {diff}")
  for p, v in got.items():
    if tuple(v.shape) != tuple(expected[p].shape):
      raise ValueError(f"export_gr00t: {'/'.join(p)} has shape {tuple(v.shape)}, config expects "
                       f"{tuple(expected[p].shape)}")
  os.makedirs(out_dir, exist_ok=True)
  tensors = gr00t_tensors_from_params(params)
  full = dict(
      architectures=["GR00T_N1_5"], model_type="gr00t_n1_5", action_horizon=config.action_horizon,
      action_dim=config.action_dim, action_head_cfg=config.to_gr00t_dict(),
      backbone_cfg=dict(project_to_dim=config.backbone_embedding_dim if config.has_projection else None),
      torch_dtype="float32")
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(full, f, indent=2)
  safetensors_io.write_sharded(tensors, out_dir, max_shard_bytes)
