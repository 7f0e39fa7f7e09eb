"""Model configuration for Qwen3-VL: frozen dataclasses built from the variant table below
(`tiny`, `2b`, `4b`, `8b`) or from an HF `config.json`, and written back to one.

What differs from Qwen2.5-VL (`models/qwen2_5_vl/config.py`):
- text: Qwen3 decoder, explicit `head_dim` (128; not hidden / heads), q/k RMSNorm, no qkv bias,
  rope theta 5e6, M-RoPE sections [24, 20, 20] *interleaved* over the frequencies (t h w t h w ...);
- vision: patch 16, LayerNorm blocks with a GELU(tanh) MLP, a learned 48x48 position table
  bilinearly resampled to each image's grid, no window attention, and DeepStack: the outputs of
  blocks `deepstack_visual_indexes` are merged like the final output and added to the hidden
  states of image tokens after the first len(indexes) decoder layers.

`from_hf_dict` reads the nested transformers layout (`text_config` / `vision_config`), with
rope settings in `rope_parameters` (transformers >= 5) or `rope_scaling` + `rope_theta` (Hub).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from roboalign_jax.models import qwen_vl_config

ARCHITECTURE = "Qwen3VLForConditionalGeneration"
MODEL_TYPE = "qwen3_vl"


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  depth: int = 27
  hidden_size: int = 1152
  num_heads: int = 16
  intermediate_size: int = 4304
  out_hidden_size: int = 4096
  in_channels: int = 3
  patch_size: int = 16
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  num_position_embeddings: int = 2304
  deepstack_visual_indexes: tuple[int, ...] = (8, 16, 24)
  hidden_act: str = "gelu_pytorch_tanh"
  rope_theta: float = 10000.0

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Inputs per patch: C * temporal_patch * patch * patch (1536 for the released models)."""
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @property
  def num_grid_per_side(self) -> int:
    """Side of the square learned position table (48 for 2304 entries)."""
    return math.isqrt(self.num_position_embeddings)


@dataclasses.dataclass(frozen=True)
class TextConfig:
  hidden_size: int = 4096
  num_hidden_layers: int = 36
  num_attention_heads: int = 32
  num_key_value_heads: int = 8
  head_dim: int = 128
  intermediate_size: int = 12288
  vocab_size: int = 151936
  tie_word_embeddings: bool = False
  rope_theta: float = 5_000_000.0
  mrope_section: tuple[int, int, int] = (24, 20, 20)
  rms_norm_eps: float = 1e-6
  max_position_embeddings: int = 262144


@dataclasses.dataclass(frozen=True)
class Qwen3VLConfig:
  """Everything the Flax model needs. `dtype` is the compute dtype (params keep their own)."""
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  bos_token_id: int | None = 151643
  eos_token_id: int | list[int] | None = 151645
  pad_token_id: int | None = None
  dtype: Any = jnp.float32
  remat: bool = False  # rematerialise each decoder / vision block in the backward pass

  def replace(self, **kw) -> "Qwen3VLConfig":
    return dataclasses.replace(self, **kw)

  def validate(self) -> "Qwen3VLConfig":
    t, v = self.text, self.vision
    qwen_vl_config.check_shapes(t, v)
    if v.num_grid_per_side ** 2 != v.num_position_embeddings:
      raise ValueError(f"vision num_position_embeddings {v.num_position_embeddings} must be a square "
                       "(the learned position table is side x side)")
    if any(not 0 <= i < v.depth for i in v.deepstack_visual_indexes):
      raise ValueError(f"deepstack_visual_indexes {v.deepstack_visual_indexes} must be vision block indexes "
                       f"in 0..{v.depth - 1}")
    if len(v.deepstack_visual_indexes) > t.num_hidden_layers:
      raise ValueError(f"{len(v.deepstack_visual_indexes)} DeepStack levels but only {t.num_hidden_layers} "
                       "decoder layers to add them to")
    return self

  # ---- construction -------------------------------------------------------------------------
  @classmethod
  def from_variant(cls, variant: str, **overrides) -> "Qwen3VLConfig":
    """One of VARIANTS: "tiny" (CPU tests and demo), "2b", "4b", "8b" (the released models)."""
    if variant not in VARIANTS:
      raise ValueError(f"unknown Qwen3-VL variant {variant!r}; allowed: {list(VARIANTS)}")
    text, vision, ids = VARIANTS[variant]
    return cls(text=text, vision=vision, **ids, **overrides).validate()

  @classmethod
  def from_hf_dict(cls, d: dict, source: str = "config", **overrides) -> "Qwen3VLConfig":
    """From the dict of an HF Qwen3-VL `config.json`. `source` names it in errors."""
    qwen_vl_config.check_model_type(d, source, model_type=MODEL_TYPE, architecture=ARCHITECTURE,
                                    display_name="Qwen3-VL")
    if "vision_config" not in d or "text_config" not in d:
      raise ValueError(f"{source}: missing 'text_config' / 'vision_config'; expected a Qwen3-VL config")
    td, vd = d["text_config"], d["vision_config"]
    rope = dict(td.get("rope_scaling") or {})
    rope.update(td.get("rope_parameters") or {})
    theta = rope.get("rope_theta", td.get("rope_theta", 5_000_000.0))
    section = rope.get("mrope_section", (24, 20, 20))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
      raise ValueError(f"{source}: rope type {rope_type!r} not supported (expected 'default')")
    if not rope.get("mrope_interleaved", True):
      raise ValueError(f"{source}: mrope_interleaved=false is not Qwen3-VL's layout")
    qwen_vl_config.check_text_fields(td, source, "text_config")
    tie = bool(d.get("tie_word_embeddings", td.get("tie_word_embeddings", False)))
    heads = td["num_attention_heads"]
    text = TextConfig(
        hidden_size=td["hidden_size"], num_hidden_layers=td["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=td.get("num_key_value_heads") or heads,
        head_dim=td.get("head_dim") or td["hidden_size"] // heads,
        intermediate_size=td["intermediate_size"], vocab_size=td["vocab_size"], tie_word_embeddings=tie,
        rope_theta=float(theta), mrope_section=tuple(int(s) for s in section),
        rms_norm_eps=float(td.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=td.get("max_position_embeddings", 262144))
    vision = VisionConfig(**qwen_vl_config.vision_fields(vd, VisionConfig))
    return cls(text=text, vision=vision, **qwen_vl_config.token_ids(d, td), **overrides).validate()

  @classmethod
  def from_json_file(cls, path: str, **overrides) -> "Qwen3VLConfig":
    return cls.from_hf_dict(qwen_vl_config.read_json(path), source=path, **overrides)

  def to_hf_dict(self) -> dict:
    """A nested config.json in the Hub's layout (read by transformers 4.57+ and 5)."""
    t, v = self.text, self.vision
    rope = {"rope_type": "default", "mrope_section": list(t.mrope_section), "mrope_interleaved": True,
            "rope_theta": t.rope_theta}
    text = dict(
        model_type="qwen3_vl_text", hidden_size=t.hidden_size, num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
        head_dim=t.head_dim, intermediate_size=t.intermediate_size, vocab_size=t.vocab_size,
        hidden_act="silu", rms_norm_eps=t.rms_norm_eps, max_position_embeddings=t.max_position_embeddings,
        rope_parameters=rope, rope_scaling=rope, rope_theta=t.rope_theta, tie_word_embeddings=t.tie_word_embeddings,
        attention_bias=False, attention_dropout=0.0, bos_token_id=self.bos_token_id,
        eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id)
    vision = dict(
        model_type="qwen3_vl", depth=v.depth, hidden_size=v.hidden_size, num_heads=v.num_heads,
        intermediate_size=v.intermediate_size, out_hidden_size=v.out_hidden_size, hidden_act=v.hidden_act,
        in_channels=v.in_channels, patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
        spatial_merge_size=v.spatial_merge_size, num_position_embeddings=v.num_position_embeddings,
        deepstack_visual_indexes=list(v.deepstack_visual_indexes),
        rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta})
    return dict(
        architectures=[ARCHITECTURE], model_type=MODEL_TYPE, text_config=text, vision_config=vision,
        image_token_id=self.image_token_id, video_token_id=self.video_token_id,
        vision_start_token_id=self.vision_start_token_id, vision_end_token_id=self.vision_end_token_id,
        tie_word_embeddings=t.tie_word_embeddings, torch_dtype="float32")


# ---- variants ----------------------------------------------------------------------------------
# Numbers of Qwen/Qwen3-VL-{2B,4B,8B}-Instruct (config.json on the Hub); their parameter counts are
# checked against HF's own model built on the meta device (tests/test_qwen3_vl_checkpoint.py).
_QWEN_TOKEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                       vision_end_token_id=151653)
# The tiny tokenizer keeps Qwen's special tokens in Qwen's order from id 0 (as for Qwen2.5-VL).
_TINY_TOKEN_IDS = dict(image_token_id=12, video_token_id=13, vision_start_token_id=9, vision_end_token_id=10,
                       bos_token_id=0, eos_token_id=2, pad_token_id=0)
_SMALL_VISION = dict(depth=24, hidden_size=1024, num_heads=16, intermediate_size=4096,
                     deepstack_visual_indexes=(5, 11, 17))

VARIANTS: dict[str, tuple[TextConfig, VisionConfig, dict]] = {
    "8b": (TextConfig(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=12288, tie_word_embeddings=False),
           VisionConfig(depth=27, hidden_size=1152, num_heads=16, intermediate_size=4304, out_hidden_size=4096,
                        deepstack_visual_indexes=(8, 16, 24)), _QWEN_TOKEN_IDS),
    "4b": (TextConfig(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=9728, tie_word_embeddings=True),
           VisionConfig(**_SMALL_VISION, out_hidden_size=2560), _QWEN_TOKEN_IDS),
    "2b": (TextConfig(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                      intermediate_size=6144, tie_word_embeddings=True),
           VisionConfig(**_SMALL_VISION, out_hidden_size=2048), _QWEN_TOKEN_IDS),
    # Small enough for a 2-core CPU, with every structural feature of the 8B: GQA, head_dim != hidden /
    # heads, interleaved M-RoPE sections, three DeepStack levels, a learned position table that must
    # be resampled (8x8 for any image grid), untied head. Vocabulary: the tiny BPE (1024 ids).
    "tiny": (TextConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=32, intermediate_size=128, vocab_size=1024, tie_word_embeddings=False,
                        mrope_section=(6, 5, 5), max_position_embeddings=4096),
             VisionConfig(depth=4, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64,
                          num_position_embeddings=64, deepstack_visual_indexes=(0, 1, 2)), _TINY_TOKEN_IDS),
}
