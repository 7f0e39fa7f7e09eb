"""HF checkpoint I/O for Qwen2.5-VL: safetensors (single file or sharded with an index) <->
our parameter tree, never via pickle; the mapping and file handling are those of every Qwen-VL
family (`models/qwen_vl_checkpoint.py`), this module gives Qwen2.5-VL's names and classes.

Accepted tensor names: the Hub layout (`visual.*`, `model.embed_tokens|layers.N|norm`,
`lm_head`) and the newer transformers layout (`model.visual.*`, `model.language_model.*`).
`save_pretrained` writes the Hub layout, which every transformers version since Qwen2.5-VL
(and other runtimes) loads. Indexed modules: vision `blocks.N`, decoder `layers.N` and the
merger's `mlp.0` / `mlp.2`.
"""

from __future__ import annotations

from roboalign_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from roboalign_jax.models.qwen2_5_vl.model import Qwen2_5_VL
from roboalign_jax.models.qwen_vl_checkpoint import (FLAX_CONFIG, FLAX_PARAMS, CheckpointIO, dummy_inputs,
                                                     read_hf_tensors, stored_dtype)

__all__ = ["FLAX_CONFIG", "FLAX_PARAMS", "abstract_params", "config_from_json", "config_to_json", "dummy_inputs",
           "hf_tensors_from_params", "load_flax", "load_pretrained", "params_from_hf_tensors", "read_hf_tensors",
           "save_flax", "save_pretrained", "stored_dtype"]

_IO = CheckpointIO(
    display_name="Qwen2.5-VL", format_name="roboalign_jax.qwen2_5_vl", model_cls=Qwen2_5_VL,
    config_cls=Qwen2_5_VLConfig, prefixes={"visual": "visual.", "language_model": "model."},
    also_read={"model.visual.": "visual", "model.language_model.": "language_model"},
    indexed=("blocks", "layers", "mlp"),
    flax_writer="save_flax (launch/convert_checkpoint.py --hf_dir=... --out=...)")

abstract_params = _IO.abstract_params
params_from_hf_tensors = _IO.params_from_hf_tensors
load_pretrained = _IO.load_pretrained
hf_tensors_from_params = _IO.hf_tensors_from_params
save_pretrained = _IO.save_pretrained
save_flax = _IO.save_flax
load_flax = _IO.load_flax
config_to_json = _IO.config_to_json
config_from_json = _IO.config_from_json
