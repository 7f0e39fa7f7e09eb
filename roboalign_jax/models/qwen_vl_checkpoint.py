"""HF checkpoint I/O of a Qwen-VL family (Qwen2.5-VL, Qwen3-VL): safetensors (single file or
sharded with an index) <-> our parameter tree, never via pickle, and our own format (the converter's
output: `params.safetensors` keyed by tree path + `roboalign_config.json`).

The families differ only in their naming rules and classes, which each family's `checkpoint_io.py`
gives to a `CheckpointIO` and whose bound methods it exports as its module functions:

- `prefixes`: our root (`visual`, `language_model`) -> the HF name prefix `save_pretrained` writes;
  `also_read`: further HF prefix -> root pairs accepted when reading (older or newer layouts);
- `indexed`: HF ModuleList names, `blocks.3` <-> `blocks_3`.

The rest of a name maps part by part: `model.visual.blocks.3.attn.qkv.weight` <->
visual/blocks_3/attn/qkv/kernel. An HF `weight` is our `kernel` (Linear: the HF weight transposed;
a Conv3d weight [out, C, T, P, P] flattened to [C*T*P*P, out]), `embedding` (nn.Embed) or `weight`
(norms): whichever the model has. Other leaves (`bias`) keep their name; `lm_head.weight` is
lm_head/kernel, absent when the head is tied to the embedding.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from roboalign_jax.models import safetensors_io

_IGNORED = re.compile(r".*(rotary_emb\.inv_freq|\.original_inv_freq)$")  # buffers some exporters keep
FLAX_PARAMS = "params.safetensors"
FLAX_CONFIG = "roboalign_config.json"


def read_hf_tensors(hf_dir: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint, by HF name, as NumPy (bf16 via ml_dtypes)."""
  return safetensors_io.read_tensors(hf_dir)


def stored_dtype(hf_dir: str):
  """The floating dtype of the checkpoint's tensors (bf16 for the released models)."""
  with safe_open(safetensors_io.weight_files(hf_dir)[0], framework="numpy") as f:
    name = next(iter(f.keys()))
    return jnp.dtype(f.get_tensor(name).dtype)


def dummy_inputs(config):
  """A one-image batch that touches every parameter: (input_ids, mask, pixel_values, grid)."""
  m = config.vision.spatial_merge_size
  ids = jnp.array([[config.vision_start_token_id, config.image_token_id, config.vision_end_token_id]], jnp.int32)
  pixels = jnp.zeros((m * m, config.vision.patch_dim), jnp.float32)
  grid = jnp.array([[1, m, m]], jnp.int32)
  return ids, jnp.ones_like(ids), pixels, grid


def _to_flax_value(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    return value.reshape(value.shape[0], -1).T  # Linear [out, in] / Conv3d [out, C, T, P, P] -> [in, out]
  return value


def _to_hf_value(path: tuple[str, ...], value: np.ndarray, config) -> np.ndarray:
  if path[-1] != "kernel":
    return value
  out = value.T
  if path[:2] == ("visual", "patch_embed"):
    v = config.vision
    out = out.reshape(out.shape[0], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  return out


@dataclasses.dataclass(frozen=True)
class CheckpointIO:
  """One family's checkpoint functions (see the module docstring for the naming fields)."""
  display_name: str            # in messages: "Qwen2.5-VL"
  format_name: str             # save_flax's safetensors metadata: "roboalign_jax.qwen2_5_vl"
  model_cls: type              # model_cls(config, param_dtype=)
  config_cls: type             # from_json_file, to_hf_dict, replace, validate; default `.text`, `.vision`
  prefixes: Mapping[str, str]
  indexed: tuple[str, ...]
  also_read: Mapping[str, str] = dataclasses.field(default_factory=dict)
  flax_writer: str = "save_flax"  # what writes a load_flax directory, for its not-found message

  # ---- names ----------------------------------------------------------------------------------
  def hf_to_flax_path(self, name: str, expected) -> tuple[str, ...] | None:
    """HF tensor name -> our param path (None if it is not one of ours). `expected`: our paths,
    which settle whether an HF `weight` is a kernel, a norm scale or an embedding table."""
    if _IGNORED.match(name):
      return None
    if name == "lm_head.weight":
      return ("lm_head", "kernel")
    roots = {prefix: root for root, prefix in self.prefixes.items()} | dict(self.also_read)
    # Longest first: `model.` must not take `model.visual.*`.
    prefix = next((p for p in sorted(roots, key=len, reverse=True) if name.startswith(p)), None)
    if prefix is None:
      return None
    parts = name[len(prefix):].split(".")
    leaf = parts.pop()
    out = [roots[prefix]]
    i = 0
    while i < len(parts):
      if parts[i] in self.indexed and i + 1 < len(parts) and parts[i + 1].isdigit():
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

  def flax_to_hf_name(self, path: tuple[str, ...]) -> str:
    """Our param path -> the HF tensor name `save_pretrained` writes."""
    root, *rest = path
    if root == "lm_head":
      return "lm_head.weight"
    parts = []
    for p in rest:
      m = re.fullmatch(rf"({'|'.join(self.indexed)})_(\d+)", p)
      parts.extend([m.group(1), m.group(2)] if m else [p])
    if parts[-1] in ("kernel", "embedding"):
      parts[-1] = "weight"
    return self.prefixes[root] + ".".join(parts)

  # ---- reading --------------------------------------------------------------------------------
  def abstract_params(self, model) -> Any:
    """Parameter shapes (boxed with logical axis names) of a model (or of the model of a config)
    without allocating them."""
    if isinstance(model, self.config_cls):
      model = self.model_cls(model)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(model.config)))["params"]

  def params_from_hf_tensors(self, tensors: dict[str, np.ndarray], model, dtype=jnp.float32,
                             source: str = "checkpoint") -> dict:
    """Maps HF tensors onto our tree, checking that every parameter is present with its shape."""
    expected = traverse_util.flatten_dict(nn.unbox(self.abstract_params(model)))
    tied = model.config.text.tie_word_embeddings
    flat, unexpected = {}, []
    for name, value in tensors.items():
      path = self.hf_to_flax_path(name, expected)
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
      if path in flat:
        raise ValueError(f"{source}: tensor {name!r} given twice (Hub and transformers layouts mixed)")
      flat[path] = jnp.asarray(value, dtype=dtype)
    missing = [self.flax_to_hf_name(p) for p in expected if p not in flat]
    problems = []
    if missing:
      problems.append(f"missing {len(missing)} tensors, e.g. {missing[:5]}")
    if unexpected:
      problems.append(f"{len(unexpected)} tensors not in a {self.display_name} model of this config, "
                      f"e.g. {sorted(unexpected)[:5]}")
    if problems:
      raise ValueError(f"{source}: " + "; ".join(problems))
    return traverse_util.unflatten_dict(flat)

  def load_pretrained(self, hf_dir: str, dtype=jnp.float32, compute_dtype=None, remat: bool = False):
    """(model, params) from an HF checkpoint directory of the family (config.json + safetensors).

    dtype: parameter dtype; compute_dtype: activation dtype (defaults to dtype).
    """
    if not os.path.isdir(hf_dir):
      raise FileNotFoundError(f"checkpoint directory {hf_dir!r} not found")
    config = self.config_cls.from_json_file(os.path.join(hf_dir, "config.json"))
    config = config.replace(dtype=compute_dtype or dtype, remat=remat)
    model = self.model_cls(config, param_dtype=dtype)
    params = self.params_from_hf_tensors(read_hf_tensors(hf_dir), model, dtype=dtype, source=hf_dir)
    return model, params

  # ---- writing --------------------------------------------------------------------------------
  def hf_tensors_from_params(self, params: dict, config) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(nn.unbox(params))
    out = {}
    for path, value in flat.items():
      value = np.asarray(jax.device_get(value))
      out[self.flax_to_hf_name(path)] = np.ascontiguousarray(_to_hf_value(path, value, config))
    return out

  def save_pretrained(self, params: dict, config, out_dir: str, max_shard_bytes: int = 5 * 1024 ** 3) -> None:
    """Writes config.json + safetensors (sharded with an index above `max_shard_bytes`) in the
    layout of the released checkpoints, which transformers' `from_pretrained` loads. Tied models get
    no lm_head."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = self.hf_tensors_from_params(params, config)
    hf_config = config.to_hf_dict()
    dtypes = {str(v.dtype) for v in tensors.values()}
    hf_config["torch_dtype"] = "bfloat16" if dtypes == {"bfloat16"} else "float32"
    with open(os.path.join(out_dir, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    safetensors_io.write_sharded(tensors, out_dir, max_shard_bytes)

  # ---- our own format: flat safetensors + our config ------------------------------------------
  def save_flax(self, params: dict, config, out_dir: str) -> None:
    """Writes `params.safetensors` (keys are '/'-joined tree paths, our layout) + our config JSON."""
    os.makedirs(out_dir, exist_ok=True)
    flat = traverse_util.flatten_dict(nn.unbox(params), sep="/")
    save_file({k: np.ascontiguousarray(np.asarray(jax.device_get(v))) for k, v in flat.items()},
              os.path.join(out_dir, FLAX_PARAMS), metadata={"format": self.format_name})
    with open(os.path.join(out_dir, FLAX_CONFIG), "w") as f:
      json.dump(self.config_to_json(config), f, indent=2)

  def load_flax(self, in_dir: str, dtype=None):
    """(model, params) from a directory written by `save_flax`; dtype None keeps the stored one."""
    path, cfg_path = os.path.join(in_dir, FLAX_PARAMS), os.path.join(in_dir, FLAX_CONFIG)
    for p in (path, cfg_path):
      if not os.path.isfile(p):
        raise FileNotFoundError(f"{p!r} not found; expected a directory written by {self.flax_writer}")
    with open(cfg_path) as f:
      config = self.config_from_json(json.load(f))
    with safe_open(path, framework="numpy") as f:
      flat = {tuple(k.split("/")): f.get_tensor(k) for k in f.keys()}
    dtype = dtype or jnp.dtype(next(iter(flat.values())).dtype)
    config = config.replace(dtype=dtype)
    model = self.model_cls(config, param_dtype=dtype)
    expected = traverse_util.flatten_dict(nn.unbox(self.abstract_params(model)))
    if set(expected) != set(flat):
      diff = sorted(set(expected) ^ set(flat))[:5]
      raise ValueError(f"{path}: parameter names differ from the config's model, e.g. {diff}")
    for k, v in flat.items():
      if v.shape != expected[k].shape:
        raise ValueError(f"{path}: {'/'.join(k)} has shape {v.shape}, config expects {expected[k].shape}")
    return model, traverse_util.unflatten_dict({k: jnp.asarray(v, dtype) for k, v in flat.items()})

  def config_to_json(self, config) -> dict:
    d = dataclasses.asdict(config)
    d["dtype"] = jnp.dtype(config.dtype).name
    return d

  def config_from_json(self, d: dict):
    d = dict(d)
    default = self.config_cls()  # its `.text` / `.vision` give the sub-config classes
    text = type(default.text)(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("text").items()})
    vision = type(default.vision)(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("vision").items()})
    d["dtype"] = jnp.dtype(d.get("dtype", "float32"))
    return self.config_cls(text=text, vision=vision, **d).validate()
