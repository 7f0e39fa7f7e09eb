"""The backbone contract: what every stage needs from a multimodal LLM, and the registry of model
families keyed by `config.model.family`.

    backbone = backbone_lib.load(config.model)            # HF dir (init_dir) or random init (variant)
    backbone.model.apply({"params": params}, input_ids, attention_mask, pixel_values, image_grid_thw,
                         frame_patches=None, num_layers=None, output_hidden_states=False)
    backbone.processor.render(messages) / backbone.processor(text, images)   # chat template + images
    backbone.action_vocab                                 # FAST id <-> token id of the action tokens
    backbone.export(params, out_dir)                      # an HF directory that `load` reads back

Trainers, data, evaluation and serving reach a model only through this module, so adding a
family means one entry in FAMILIES and a `backbone.py` beside its model (as `qwen3_vl/` did). A
family module provides a `FAMILY` record (see `BackboneFamily`). Entries are import paths: a family's
code (and its heavy dependencies) load only when that family is named.

Model calls every family's Flax module offers (see `models/qwen2_5_vl/model.py`):
  apply(...) -> Output(logits float32 [B, T, vocab], hidden_states: tuple of [B, T, hidden] with
    0 = embeddings and k = after layer k when output_hidden_states); num_layers=k stops after
    layer k (features for Stage 3 without the rest of the decoder);
  prefill(...) / decode_step(...) for the KV-cache sampler (`models/sampling.py`).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib
import os
from typing import Any, Callable

import jax.numpy as jnp

from roboalign_jax.fast.vocab import ActionVocab

# config.model.family -> "module:attribute" of its BackboneFamily.
FAMILIES: dict[str, str] = {
    "qwen2_5_vl": "roboalign_jax.models.qwen2_5_vl.backbone:FAMILY",
    "qwen3_vl": "roboalign_jax.models.qwen3_vl.backbone:FAMILY",
}


@dataclasses.dataclass
class Backbone:
  """One loaded (or randomly initialisable) backbone.

  model: the family's Flax module (vocabulary includes the action tokens).
  params: host parameters, or None for a random init the trainer creates in its shardings.
  processor: chat template + tokenizer (action tokens added) + image processor.
  source_dir: where weights or processor files came from (processor files are copied on export).
  """
  family: "BackboneFamily"
  model: Any
  params: Any
  processor: Any
  action_vocab: ActionVocab
  source_dir: str

  @property
  def config(self) -> Any:
    return self.model.config

  @property
  def tokenizer(self) -> Any:
    return self.processor.tokenizer

  @property
  def hidden_size(self) -> int:
    return self.family.hidden_size(self.model.config)

  @property
  def num_layers(self) -> int:
    return self.family.num_layers(self.model.config)

  @property
  def patch_dim(self) -> int:
    """Width of a `pixel_values` row (1176 for Qwen2.5-VL)."""
    return self.family.patch_dim(self.model.config)

  @property
  def pad_token_id(self) -> int:
    return self.processor.pad_token_id

  @property
  def end_of_turn_ids(self) -> list[int]:
    """Token ids that end an assistant turn (sampling stops at any of them)."""
    return [self.tokenizer.convert_tokens_to_ids(t) for t in self.family.end_of_turn_tokens]

  @property
  def vision_token_ids(self) -> tuple[int, ...]:
    """Placeholder tokens of images and videos. Never sampled: in the full forward that recomputes
    log-probs they would be read as image slots (taking other rows' image features and shifting
    M-RoPE positions), so the recomputed log-probs would no longer be the sampler's."""
    return self.family.vision_token_ids(self.model.config)

  def dummy_inputs(self) -> tuple:
    """A small batch that touches every parameter: the arguments of `model.init(rng, *inputs)`."""
    return self.family.dummy_inputs(self.model.config)

  def export(self, params: Any, out_dir: str) -> str:
    """Writes `params` as a directory `load` (and the family's reference library) reads back."""
    return self.family.export(params, self, out_dir)

  def save_processor(self, out_dir: str) -> str:
    """Writes the processor files (tokenizer with the action tokens, image processor, template)."""
    return self.family.save_processor(self, out_dir)


@dataclasses.dataclass(frozen=True)
class BackboneFamily:
  """What a model family provides to the registry (functions of its module).

  load(dir, dtype, compute_dtype, remat) -> Backbone with params (vocabulary extended).
  random_init(variant, processor_dir, dtype, compute_dtype, remat) -> Backbone with params None.
  load_processor(dir) -> (processor with the action tokens, ActionVocab).
  export(params, backbone, out_dir) -> out_dir; save_processor(backbone, out_dir) -> out_dir.
  write_tiny(out_dir, **kw) -> a tiny random checkpoint directory (tests, demos).
  """
  name: str
  load: Callable[..., Backbone]
  random_init: Callable[..., Backbone]
  load_processor: Callable[[str], tuple[Any, ActionVocab]]
  export: Callable[[Any, Backbone, str], str]
  save_processor: Callable[[Backbone, str], str]
  dummy_inputs: Callable[[Any], tuple]
  write_tiny: Callable[..., str]
  hidden_size: Callable[[Any], int]
  num_layers: Callable[[Any], int]
  patch_dim: Callable[[Any], int]
  vision_token_ids: Callable[[Any], tuple[int, ...]]
  end_of_turn_tokens: tuple[str, ...]
  variants: tuple[str, ...]


def family(name: str) -> BackboneFamily:
  """The registered family `name` (config.model.family)."""
  if name not in FAMILIES:
    raise ValueError(f"unknown config.model.family {name!r}; registered families: {sorted(FAMILIES)}")
  module, attribute = FAMILIES[name].split(":")
  return getattr(importlib.import_module(module), attribute)


def _dtype(name: str | None, default=None):
  return jnp.dtype(name) if name else default


def load(model_config: Any, *, processor_dir: str = "") -> Backbone:
  """The backbone a stage starts from, from its `config.model` block.

  model_config fields: family, init_dir (a checkpoint directory; "" = random init), variant
  (shapes for the random init), param_dtype, compute_dtype ("" = param_dtype), remat.
  A random init takes its tokenizer and image processor from `processor_dir`.
  """
  fam = family(model_config.get("family", "qwen2_5_vl"))
  param_dtype = _dtype(model_config.get("param_dtype"), jnp.float32)
  compute = _dtype(model_config.get("compute_dtype"), param_dtype)
  remat = bool(model_config.get("remat", False))
  if model_config.get("init_dir"):
    return fam.load(model_config.init_dir, dtype=param_dtype, compute_dtype=compute, remat=remat)
  if not processor_dir or not os.path.isdir(processor_dir):
    raise FileNotFoundError(f"processor directory {processor_dir!r} not found; a random init of "
                            f"config.model.variant={model_config.get('variant')!r} needs a tokenizer + image "
                            "processor directory (or set config.model.init_dir)")
  return fam.random_init(model_config.variant, processor_dir, dtype=param_dtype, compute_dtype=compute, remat=remat)


def load_dir(hf_dir: str, *, family_name: str = "qwen2_5_vl", dtype=jnp.float32, compute_dtype=None,
             remat: bool = False) -> Backbone:
  """A backbone from a checkpoint directory (vocabulary extended with the action tokens)."""
  return family(family_name).load(hf_dir, dtype=dtype, compute_dtype=compute_dtype, remat=remat)


def load_processor(family_name: str, processor_dir: str) -> tuple[Any, ActionVocab]:
  """(processor whose tokenizer holds the action tokens, ActionVocab) from a checkpoint directory."""
  return family(family_name).load_processor(processor_dir)


def layer_features(model: Any, params: Any, input_ids, attention_mask, pixel_values, image_grid_thw, *, layer: int,
                   frame_patches: int | None = None):
  """Hidden states after decoder layer `layer` (1-based; HF's hidden_states[layer]), computing only
  the layers up to it: float [B, T, hidden]. What Stage 3's head reads (layer 18 of Qwen2.5-VL-7B)."""
  out = model.apply({"params": params}, input_ids, attention_mask, pixel_values, image_grid_thw,
                    num_layers=layer, output_hidden_states=True, frame_patches=frame_patches)
  return out.hidden_states[layer]


def paper_feature_layer(num_layers: int) -> int:
  """The paper's Stage 3 feature depth, layer 18 of Qwen2.5-VL-7B's 28, scaled to a backbone of
  `num_layers` decoder layers (18 for 28, 23 for the 36-layer 3B, 3 for the 4-layer tiny model).
  Stage 3 and the representation probe both read this layer by default."""
  return max(1, round(num_layers * 18 / 28))


def feature_layer(num_layers: int, layer: int = 0, *, name: str = "feature layer") -> int:
  """`layer`, or 0 = `paper_feature_layer(num_layers)`; ValueError naming `name` when outside
  1..num_layers."""
  chosen = int(layer) or paper_feature_layer(num_layers)
  if not 1 <= chosen <= num_layers:
    raise ValueError(f"{name}={chosen}; the backbone has {num_layers} decoder layers (expected 1..{num_layers}, "
                     "or 0 for the paper's Stage 3 depth)")
  return chosen


def content_hash(checkpoint_dir: str) -> str:
  """sha256 over a checkpoint directory's config.json and weight files (names and bytes): what
  identifies the weights a run was trained on, whatever the directory is called later."""
  files = sorted(glob.glob(os.path.join(checkpoint_dir, "*.safetensors")))
  config = os.path.join(checkpoint_dir, "config.json")
  if not files or not os.path.isfile(config):
    raise FileNotFoundError(f"{checkpoint_dir!r} has no config.json and *.safetensors to identify the backbone by")
  digest = hashlib.sha256()
  for path in [config, *files]:
    digest.update(os.path.basename(path).encode() + b"\0")
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 24), b""):
        digest.update(block)
  return digest.hexdigest()
