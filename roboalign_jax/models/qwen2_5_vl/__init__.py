"""Qwen2.5-VL in Flax Linen, numerically equal to HF transformers'
`Qwen2_5_VLForConditionalGeneration`. See `model.py` for the forward and KV-cache API."""

from roboalign_jax.models.qwen2_5_vl.checkpoint_io import (abstract_params, dummy_inputs, load_pretrained,
                                                          save_pretrained)
from roboalign_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig, TextConfig, VisionConfig
from roboalign_jax.models.qwen2_5_vl.image_processing import ImageProcessor, smart_resize
from roboalign_jax.models.qwen2_5_vl.kv_cache import KVCache
from roboalign_jax.models.qwen2_5_vl.model import Output, Qwen2_5_VL
from roboalign_jax.models.qwen2_5_vl.processor import Processor

__all__ = ["Qwen2_5_VL", "Qwen2_5_VLConfig", "TextConfig", "VisionConfig", "KVCache", "Output",
           "load_pretrained", "save_pretrained", "abstract_params", "dummy_inputs", "ImageProcessor",
           "Processor", "smart_resize"]
