"""Qwen3-VL in Flax Linen, numerically equal to HF transformers' `Qwen3VLForConditionalGeneration`.
See `model.py` for the forward and KV-cache API (the same calls as `models/qwen2_5_vl`)."""

from roboalign_jax.models.qwen2_5_vl.kv_cache import KVCache
from roboalign_jax.models.qwen3_vl.checkpoint_io import (abstract_params, dummy_inputs, load_pretrained,
                                                        save_pretrained)
from roboalign_jax.models.qwen3_vl.config import Qwen3VLConfig, TextConfig, VisionConfig
from roboalign_jax.models.qwen3_vl.model import Output, Qwen3VL

__all__ = ["Qwen3VL", "Qwen3VLConfig", "TextConfig", "VisionConfig", "KVCache", "Output",
           "load_pretrained", "save_pretrained", "abstract_params", "dummy_inputs"]
