"""HF checkpoint I/O for Qwen3-VL: safetensors (single file or sharded with an index) <-> our
parameter tree, never via pickle; the mapping and file handling are those of every Qwen-VL family
(`models/qwen_vl_checkpoint.py`), this module gives Qwen3-VL's names and classes.

Tensor names: the layout of the released checkpoints (Qwen/Qwen3-VL-{2B,4B,8B}-*), which is also
what transformers 4.57+ and 5 write and read for `Qwen3VLForConditionalGeneration`:
`model.visual.*` (vision tower, mergers, DeepStack mergers), `model.language_model.*` (decoder),
and `lm_head.weight` only when the head is untied (8B). Qwen3-VL has no older layout (transformers
defines no renaming for it, unlike Qwen2.5-VL's `visual.*` / `model.layers.*`), so other names are
refused as unexpected.

Our paths: `model.visual.blocks.3.attn.qkv.weight` <-> visual/blocks_3/attn/qkv/kernel;
`...deepstack_merger_list.1.norm.weight` <-> visual/deepstack_merger_list_1/norm/weight;
`model.visual.pos_embed.weight` <-> visual/pos_embed/embedding;
`model.language_model.embed_tokens.weight` <-> language_model/embed_tokens/embedding; norms keep
`weight` / `bias`.
"""

from __future__ import annotations

from roboalign_jax.models.qwen3_vl.config import Qwen3VLConfig
from roboalign_jax.models.qwen3_vl.model import Qwen3VL
from roboalign_jax.models.qwen_vl_checkpoint import (FLAX_CONFIG, FLAX_PARAMS, CheckpointIO, dummy_inputs,
                                                     read_hf_tensors, stored_dtype)

__all__ = ["FLAX_CONFIG", "FLAX_PARAMS", "abstract_params", "config_from_json", "config_to_json", "dummy_inputs",
           "hf_tensors_from_params", "load_flax", "load_pretrained", "params_from_hf_tensors", "read_hf_tensors",
           "save_flax", "save_pretrained", "stored_dtype"]

_IO = CheckpointIO(
    display_name="Qwen3-VL", format_name="roboalign_jax.qwen3_vl", model_cls=Qwen3VL, config_cls=Qwen3VLConfig,
    prefixes={"visual": "model.visual.", "language_model": "model.language_model."},
    indexed=("blocks", "layers", "deepstack_merger_list"))

abstract_params = _IO.abstract_params
params_from_hf_tensors = _IO.params_from_hf_tensors
load_pretrained = _IO.load_pretrained
hf_tensors_from_params = _IO.hf_tensors_from_params
save_pretrained = _IO.save_pretrained
save_flax = _IO.save_flax
load_flax = _IO.load_flax
config_to_json = _IO.config_to_json
config_from_json = _IO.config_from_json
