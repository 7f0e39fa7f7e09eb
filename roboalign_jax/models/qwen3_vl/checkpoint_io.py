"""HF checkpoint I/O for Qwen3-VL: safetensors (single file or sharded with an index) <-> our
parameter tree, never via pickle.

Tensor names: the layout of the released checkpoints (Qwen/Qwen3-VL-{2B,4B,8B}-*), which is also
what transformers 4.57+ and 5 write and read for `Qwen3VLForConditionalGeneration`:
`model.visual.*` (vision tower, mergers, DeepStack mergers), `model.language_model.*` (decoder),
and `lm_head.weight` only when the head is untied (8B). Qwen3-VL has no older layout (transformers
defines no renaming for it, unlike Qwen2.5-VL's `visual.*` / `model.layers.*`), so other names are
refused as unexpected.

Our paths: `model.visual.blocks.3.attn.qkv.weight` <-> visual/blocks_3/attn/qkv/kernel (Linear
kernels are the HF weight transposed; the patch embedding's Conv3d weight [out, C, T, P, P] is
flattened to [C*T*P*P, out]); `...deepstack_merger_list.1.norm.weight` <->
visual/deepstack_merger_list_1/norm/weight; `model.visual.pos_embed.weight` <->
visual/pos_embed/embedding; `model.language_model.embed_tokens.weight` <->
language_model/embed_tokens/embedding; norms keep `weight` / `bias`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from roboalign_jax.models import safetensors_io
from roboalign_jax.models.qwen3_vl.config import Qwen3VLConfig, TextConfig, VisionConfig
from roboalign_jax.models.qwen3_vl.model import Qwen3VL

_IGNORED = re.compile(r".*(rotary_emb\.inv_freq|\.original_inv_freq)$")  # buffers some exporters keep
_ROOTS = {"model.visual.": "visual", "model.language_model.": "language_model"}
_INDEXED = ("blocks", "layers", "deepstack_merger_list")  # HF ModuleLists: `blocks.3` <-> `blocks_3`


# ---- names ------------------------------------------------------------------------------------
def _hf_to_flax_path(name: str, expected) -> tuple[str, ...] | None:
  """HF tensor name -> our param path (None if it is not one of ours). `expected`: our paths,
  which settle whether an HF `weight` is a kernel, a norm scale or an embedding table."""
  if _IGNORED.match(name):
    return None
  if name == "lm_head.weight":
    return ("lm_head", "kernel")
  root = next((r for r in _ROOTS if name.startswith(r)), None)
  if root is None:
    return None
  parts = name[len(root):].split(".")
  leaf = parts.pop()
  out = [_ROOTS[root]]
  i = 0
  while i < len(parts):
    if parts[i] in _INDEXED and i + 1 < len(parts) and parts[i + 1].isdigit():
      out.append(f"{parts[i]}_{parts[i + 1]}")
      i += 2
    else:
      out.append(parts[i])
      i += 1
  if leaf == "weight":
    for ours in ("weight", "kernel", "embedding"):
      if tuple(out) + (ours,) in expected:
        return tuple(out) + (ours,)
  return tuple(out) + (leaf,)


def _flax_to_hf_name(path: tuple[str, ...]) -> str:
  """Our param path -> HF tensor name (the Hub layout)."""
  root, *rest = path
  if root == "lm_head":
    return "lm_head.weight"
  parts = []
  for p in rest:
    m = re.fullmatch(rf"({'|'.join(_INDEXED)})_(\d+)", p)
    parts.extend([m.group(1), m.group(2)] if m else [p])
  if parts[-1] in ("kernel", "embedding"):
    parts[-1] = "weight"
  prefix = {v: k for k, v in _ROOTS.items()}[root]
  return prefix + ".".join(parts)


def _to_flax_value(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    return value.reshape(value.shape[0], -1).T  # Linear [out, in] / Conv3d [out, C, T, P, P] -> [in, out]
  return value


def _to_hf_value(path: tuple[str, ...], value: np.ndarray, config: Qwen3VLConfig) -> np.ndarray:
  if path[-1] != "kernel":
    return value
  out = value.T
  if path[:2] == ("visual", "patch_embed"):
    v = config.vision
    out = out.reshape(out.shape[0], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  return out


# ---- reading ----------------------------------------------------------------------------------
def read_hf_tensors(hf_dir: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint, by HF name, as NumPy (bf16 via ml_dtypes)."""
  return safetensors_io.read_tensors(hf_dir)


def stored_dtype(hf_dir: str):
  """The floating dtype of the checkpoint's tensors (bf16 for the released models)."""
  with safe_open(safetensors_io.weight_files(hf_dir)[0], framework="numpy") as f:
    name = next(iter(f.keys()))
    return jnp.dtype(f.get_tensor(name).dtype)


def abstract_params(model: Qwen3VL | Qwen3VLConfig) -> Any:
  """Parameter shapes (boxed with logical axis names) without allocating them. Takes the model, as
  `qwen2_5_vl.abstract_params` does, or just its config."""
  if isinstance(model, Qwen3VLConfig):
    model = Qwen3VL(model)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(model.config)))["params"]


def dummy_inputs(config: Qwen3VLConfig):
  """A one-image batch that touches every parameter: (input_ids, mask, pixel_values, grid)."""
  m = config.vision.spatial_merge_size
  ids = jnp.array([[config.vision_start_token_id, config.image_token_id, config.vision_end_token_id]], jnp.int32)
  pixels = jnp.zeros((m * m, config.vision.patch_dim), jnp.float32)
  grid = jnp.array([[1, m, m]], jnp.int32)
  return ids, jnp.ones_like(ids), pixels, grid


def params_from_hf_tensors(tensors: dict[str, np.ndarray], model: Qwen3VL, dtype=jnp.float32,
                           source: str = "checkpoint") -> dict:
  """Maps HF tensors onto our tree, checking that every parameter is present with its shape."""
  expected = traverse_util.flatten_dict(nn.unbox(abstract_params(model)))
  tied = model.config.text.tie_word_embeddings
  flat, unexpected = {}, []
  for name, value in tensors.items():
    path = _hf_to_flax_path(name, expected)
    if path is None:
      if not _IGNORED.match(name):
        unexpected.append(name)
      continue
    if path == ("lm_head", "kernel") and tied:
      continue  # tied: the head is the embedding
    if path not in expected:
      unexpected.append(name)
      continue
    value = _to_flax_value(path, np.asarray(value))
    if value.shape != expected[path].shape:
      raise ValueError(f"{source}: tensor {name!r} has shape {tuple(np.shape(tensors[name]))} (as ours: "
                       f"{tuple(value.shape)}) but the config expects {tuple(expected[path].shape)}")
    flat[path] = jnp.asarray(value, dtype=dtype)
  missing = [_flax_to_hf_name(p) for p in expected if p not in flat]
  problems = []
  if missing:
    problems.append(f"missing {len(missing)} tensors, e.g. {missing[:5]}")
  if unexpected:
    problems.append(f"{len(unexpected)} tensors not in a Qwen3-VL model of this config, e.g. {sorted(unexpected)[:5]}")
  if problems:
    raise ValueError(f"{source}: " + "; ".join(problems))
  return traverse_util.unflatten_dict(flat)


def load_pretrained(hf_dir: str, dtype=jnp.float32, compute_dtype=None, remat: bool = False):
  """(model, params) from an HF Qwen3-VL directory (config.json + safetensors).

  dtype: parameter dtype; compute_dtype: activation dtype (defaults to dtype).
  """
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"checkpoint directory {hf_dir!r} not found")
  config = Qwen3VLConfig.from_json_file(os.path.join(hf_dir, "config.json"))
  config = config.replace(dtype=compute_dtype or dtype, remat=remat)
  model = Qwen3VL(config, param_dtype=dtype)
  params = params_from_hf_tensors(read_hf_tensors(hf_dir), model, dtype=dtype, source=hf_dir)
  return model, params


# ---- writing ----------------------------------------------------------------------------------
def hf_tensors_from_params(params: dict, config: Qwen3VLConfig) -> dict[str, np.ndarray]:
  flat = traverse_util.flatten_dict(nn.unbox(params))
  out = {}
  for path, value in flat.items():
    value = np.asarray(jax.device_get(value))
    out[_flax_to_hf_name(path)] = np.ascontiguousarray(_to_hf_value(path, value, config))
  return out


def save_pretrained(params: dict, config: Qwen3VLConfig, out_dir: str,
                    max_shard_bytes: int = 5 * 1024 ** 3) -> None:
  """Writes config.json + safetensors (sharded with an index above `max_shard_bytes`), loadable by
  `transformers.Qwen3VLForConditionalGeneration.from_pretrained`. Tied models get no lm_head."""
  os.makedirs(out_dir, exist_ok=True)
  tensors = hf_tensors_from_params(params, config)
  hf_config = config.to_hf_dict()
  dtypes = {str(v.dtype) for v in tensors.values()}
  hf_config["torch_dtype"] = "bfloat16" if dtypes == {"bfloat16"} else "float32"
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
  safetensors_io.write_sharded(tensors, out_dir, max_shard_bytes)


# ---- our own format (the converter's output): flat safetensors + our config ------------------
FLAX_PARAMS = "params.safetensors"
FLAX_CONFIG = "roboalign_config.json"


def save_flax(params: dict, config: Qwen3VLConfig, out_dir: str) -> None:
  """Writes `params.safetensors` (keys are '/'-joined tree paths, our layout) + our config JSON."""
  os.makedirs(out_dir, exist_ok=True)
  flat = traverse_util.flatten_dict(nn.unbox(params), sep="/")
  save_file({k: np.ascontiguousarray(np.asarray(jax.device_get(v))) for k, v in flat.items()},
            os.path.join(out_dir, FLAX_PARAMS), metadata={"format": "roboalign_jax.qwen3_vl"})
  with open(os.path.join(out_dir, FLAX_CONFIG), "w") as f:
    json.dump(config_to_json(config), f, indent=2)


def load_flax(in_dir: str, dtype=None):
  """(model, params) from a directory written by `save_flax`; dtype None keeps the stored one."""
  path, cfg_path = os.path.join(in_dir, FLAX_PARAMS), os.path.join(in_dir, FLAX_CONFIG)
  for p in (path, cfg_path):
    if not os.path.isfile(p):
      raise FileNotFoundError(f"{p!r} not found; expected a directory written by save_flax")
  with open(cfg_path) as f:
    config = config_from_json(json.load(f))
  with safe_open(path, framework="numpy") as f:
    flat = {tuple(k.split("/")): f.get_tensor(k) for k in f.keys()}
  dtype = dtype or jnp.dtype(next(iter(flat.values())).dtype)
  config = config.replace(dtype=dtype)
  model = Qwen3VL(config, param_dtype=dtype)
  expected = traverse_util.flatten_dict(nn.unbox(abstract_params(model)))
  if set(expected) != set(flat):
    diff = sorted(set(expected) ^ set(flat))[:5]
    raise ValueError(f"{path}: parameter names differ from the config's model, e.g. {diff}")
  for k, v in flat.items():
    if v.shape != expected[k].shape:
      raise ValueError(f"{path}: {'/'.join(k)} has shape {v.shape}, config expects {expected[k].shape}")
  return model, traverse_util.unflatten_dict({k: jnp.asarray(v, dtype) for k, v in flat.items()})


def config_to_json(config: Qwen3VLConfig) -> dict:
  d = dataclasses.asdict(config)
  d["dtype"] = jnp.dtype(config.dtype).name
  return d


def config_from_json(d: dict) -> Qwen3VLConfig:
  d = dict(d)
  text = TextConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("text").items()})
  vision = VisionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("vision").items()})
  d["dtype"] = jnp.dtype(d.get("dtype", "float32"))
  return Qwen3VLConfig(text=text, vision=vision, **d).validate()
