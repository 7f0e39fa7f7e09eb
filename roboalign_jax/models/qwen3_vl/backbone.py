"""Qwen3-VL as a registered backbone family (`config.model.family = "qwen3_vl"`); loading, random
init, vocabulary extension and export are those of every Qwen-VL family (`models/qwen_vl_family.py`)."""

from __future__ import annotations

from roboalign_jax.models.qwen3_vl import checkpoint_io, tiny
from roboalign_jax.models.qwen3_vl.config import VARIANTS, Qwen3VLConfig
from roboalign_jax.models.qwen3_vl.model import Qwen3VL
from roboalign_jax.models.qwen3_vl.processor import Processor
from roboalign_jax.models.qwen_vl_family import make_family

FAMILY = make_family(
    "qwen3_vl", display_name="Qwen3-VL", model_cls=Qwen3VL, config_cls=Qwen3VLConfig, checkpoint_io=checkpoint_io,
    processor_cls=Processor, write_tiny=tiny.write_checkpoint, variants=tuple(VARIANTS))
