"""Offline stand-ins for a Qwen3-VL checkpoint directory: Qwen2.5-VL's tiny byte-level BPE
tokenizer (Qwen's special tokens at ids 0..13) with Qwen3-VL's chat format, Qwen3-VL's image
processor settings at a small pixel budget, and random weights written by our own
`save_pretrained` (no torch, no Hub).

    from roboalign_jax.models.qwen3_vl import tiny
    tiny.write_checkpoint("/tmp/qwen3_tiny")   # config.json, model.safetensors, tokenizer files
    backbone = backbone_lib.load_dir("/tmp/qwen3_tiny", family_name="qwen3_vl")
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from roboalign_jax.models.qwen2_5_vl import tiny as qwen2_5_vl_tiny
from roboalign_jax.models.qwen3_vl.checkpoint_io import dummy_inputs, save_pretrained
from roboalign_jax.models.qwen3_vl.config import Qwen3VLConfig
from roboalign_jax.models.qwen3_vl.model import Qwen3VL

# Qwen3-VL-Instruct's chat format for text and images: unlike Qwen2.5-VL no default system turn;
# a leading system message (string or text items) becomes the system turn. (The released template
# also renders tool calls, tool responses and video timestamps, which the tiny one leaves out.)
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if loop.first -%}{{- '<|im_start|>system\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}{%- if 'text' in item -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' + image_count.value|string + ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' + video_count.value|string + ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in item -%}{{- item['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

MIN_PIXELS = 64 * 64  # 4 merged tokens (a merged token covers 32 x 32 px)
IMAGE_PROCESSOR_CONFIG = dict(
    image_processor_type="Qwen2VLImageProcessor",
    processor_class="Qwen3VLProcessor",
    do_resize=True, do_rescale=True, do_normalize=True, do_convert_rgb=True,
    rescale_factor=1 / 255, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    resample=3,  # bicubic
    patch_size=16, temporal_patch_size=2, merge_size=2,
    size={"shortest_edge": MIN_PIXELS, "longest_edge": 64 * 32 * 32},
)


def write_tokenizer(out_dir: str) -> None:
  qwen2_5_vl_tiny.write_tokenizer(out_dir, chat_template=CHAT_TEMPLATE)


def write_image_processor_config(out_dir: str, max_pixels: int = 64 * 32 * 32) -> None:
  """max_pixels bounds the resize (64 merged tokens per image by default)."""
  cfg = dict(IMAGE_PROCESSOR_CONFIG, size={"shortest_edge": MIN_PIXELS, "longest_edge": max_pixels})
  with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
    json.dump(cfg, f, indent=2)


def random_params(config: Qwen3VLConfig, seed: int = 0, dtype=jnp.float32) -> dict:
  """HF-style random init (normal(0.02) weights, zero biases, unit norms) for our model."""
  model = Qwen3VL(config, param_dtype=dtype)
  return nn.unbox(jax.jit(model.init)(jax.random.key(seed), *dummy_inputs(config))["params"])


def write_checkpoint(out_dir: str, variant: str = "tiny", seed: int = 0, max_pixels: int = 64 * 32 * 32) -> str:
  """A complete Qwen3-VL directory with random weights: loadable by us and by transformers."""
  os.makedirs(out_dir, exist_ok=True)
  config = Qwen3VLConfig.from_variant(variant)
  save_pretrained(random_params(config, seed), config, out_dir)
  write_tokenizer(out_dir)
  write_image_processor_config(out_dir, max_pixels=max_pixels)
  return out_dir
