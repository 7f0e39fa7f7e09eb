"""Qwen2.5-VL as a registered backbone family (`config.model.family = "qwen2_5_vl"`); what loading,
random init and export do is shared with Qwen3-VL (`models/qwen_vl_family.py`)."""

from __future__ import annotations

from roboalign_jax.models.qwen2_5_vl import checkpoint_io, tiny
from roboalign_jax.models.qwen2_5_vl.config import VARIANTS, Qwen2_5_VLConfig
from roboalign_jax.models.qwen2_5_vl.model import Qwen2_5_VL
from roboalign_jax.models.qwen2_5_vl.processor import Processor
from roboalign_jax.models.qwen_vl_family import make_family

FAMILY = make_family(
    "qwen2_5_vl", display_name="Qwen2.5-VL", model_cls=Qwen2_5_VL, config_cls=Qwen2_5_VLConfig,
    checkpoint_io=checkpoint_io, processor_cls=Processor, write_tiny=tiny.write_checkpoint, variants=tuple(VARIANTS))
