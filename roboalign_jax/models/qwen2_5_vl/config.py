"""Model configuration for Qwen2.5-VL: frozen dataclasses built from the variant table below
(`tiny`, `3b`, `7b`) or from an HF `config.json`, and written back to one.

HF configs come in several layouts; `from_hf_dict` accepts all of them:
flat (text fields at the top level, as on the Hub) or nested `text_config`; `rope_scaling`
(older) or `rope_parameters` (transformers >= 5), or a top-level `rope_theta`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from roboalign_jax.models import qwen_vl_config

ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
MODEL_TYPE = "qwen2_5_vl"


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  depth: int = 32
  hidden_size: int = 1280
  num_heads: int = 16
  intermediate_size: int = 3420
  out_hidden_size: int = 3584
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  rms_norm_eps: float = 1e-6
  tokens_per_second: int = 2
  rope_theta: float = 10000.0

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Inputs per patch: C * temporal_patch * patch * patch (1176 for the released models)."""
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @property
  def merger_window(self) -> int:
    """Window side in merged (2x2) units: 112 px / 14 px / 2 = 4."""
    return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
  hidden_size: int = 3584
  num_hidden_layers: int = 28
  num_attention_heads: int = 28
  num_key_value_heads: int = 4
  intermediate_size: int = 18944
  vocab_size: int = 152064
  tie_word_embeddings: bool = False
  rope_theta: float = 1_000_000.0
  mrope_section: tuple[int, int, int] = (16, 24, 24)
  rms_norm_eps: float = 1e-6
  max_position_embeddings: int = 128000

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class Qwen2_5_VLConfig:
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

  def replace(self, **kw) -> "Qwen2_5_VLConfig":
    return dataclasses.replace(self, **kw)

  def validate(self) -> "Qwen2_5_VLConfig":
    t, v = self.text, self.vision
    if t.hidden_size % t.num_attention_heads:
      raise ValueError(f"text hidden_size {t.hidden_size} not divisible by num_attention_heads {t.num_attention_heads}")
    qwen_vl_config.check_shapes(t, v)
    return self

  # ---- construction -------------------------------------------------------------------------
  @classmethod
  def from_variant(cls, variant: str, **overrides) -> "Qwen2_5_VLConfig":
    """One of VARIANTS: "tiny" (CPU tests and demo), "3b", "7b" (the released models)."""
    if variant not in VARIANTS:
      raise ValueError(f"unknown Qwen2.5-VL variant {variant!r}; allowed: {list(VARIANTS)}")
    text, vision, ids = VARIANTS[variant]
    return cls(text=text, vision=vision, **ids, **overrides).validate()

  @classmethod
  def from_hf_dict(cls, d: dict, source: str = "config", **overrides) -> "Qwen2_5_VLConfig":
    """From the dict of an HF Qwen2.5-VL `config.json`. `source` names it in errors."""
    qwen_vl_config.check_model_type(d, source, model_type=MODEL_TYPE, architecture=ARCHITECTURE,
                                    display_name="Qwen2.5-VL")
    if "vision_config" not in d:
      raise ValueError(f"{source}: missing 'vision_config'; expected a Qwen2.5-VL config")
    # Flat (Hub) layout keeps text fields at the top; nested layout has text_config.
    td = dict(d)
    td.update(d.get("text_config") or {})
    vd = d["vision_config"]
    rope = td.get("rope_parameters") or td.get("rope_scaling") or {}
    theta = rope.get("rope_theta", td.get("rope_theta", 1_000_000.0))
    section = rope.get("mrope_section")
    if section is None:
      raise ValueError(f"{source}: no mrope_section in rope_parameters / rope_scaling")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
      raise ValueError(f"{source}: rope type {rope_type!r} not supported (expected 'default' or 'mrope')")
    qwen_vl_config.check_text_fields(td, source, "text config")
    tie = bool(d.get("tie_word_embeddings", False) or td.get("tie_word_embeddings", False))
    text = TextConfig(
        hidden_size=td["hidden_size"], num_hidden_layers=td["num_hidden_layers"],
        num_attention_heads=td["num_attention_heads"],
        num_key_value_heads=td.get("num_key_value_heads") or td["num_attention_heads"],
        intermediate_size=td["intermediate_size"], vocab_size=td["vocab_size"],
        tie_word_embeddings=tie, rope_theta=float(theta), mrope_section=tuple(int(s) for s in section),
        rms_norm_eps=float(td.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=td.get("max_position_embeddings", 128000))
    vision = VisionConfig(**qwen_vl_config.vision_fields(vd, VisionConfig))
    return cls(text=text, vision=vision, **qwen_vl_config.token_ids(d, td), **overrides).validate()

  @classmethod
  def from_json_file(cls, path: str, **overrides) -> "Qwen2_5_VLConfig":
    return cls.from_hf_dict(qwen_vl_config.read_json(path), source=path, **overrides)

  def to_hf_dict(self) -> dict:
    """A nested transformers-5 style config.json (also readable by transformers 4.5x)."""
    t, v = self.text, self.vision
    rope = {"rope_type": "default", "mrope_section": list(t.mrope_section), "rope_theta": t.rope_theta}
    text = dict(
        model_type="qwen2_5_vl_text", hidden_size=t.hidden_size, num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
        intermediate_size=t.intermediate_size, vocab_size=t.vocab_size, hidden_act="silu",
        rms_norm_eps=t.rms_norm_eps, max_position_embeddings=t.max_position_embeddings,
        rope_parameters=rope, rope_theta=t.rope_theta, tie_word_embeddings=t.tie_word_embeddings,
        bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
        use_sliding_window=False, attention_dropout=0.0)
    vision = dict(
        model_type="qwen2_5_vl_vision", depth=v.depth, hidden_size=v.hidden_size, num_heads=v.num_heads,
        intermediate_size=v.intermediate_size, out_hidden_size=v.out_hidden_size, hidden_act="silu",
        in_channels=v.in_channels, patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
        spatial_merge_size=v.spatial_merge_size, window_size=v.window_size,
        fullatt_block_indexes=list(v.fullatt_block_indexes), tokens_per_second=v.tokens_per_second)
    return dict(
        architectures=[ARCHITECTURE], model_type=MODEL_TYPE, text_config=text, vision_config=vision,
        image_token_id=self.image_token_id, video_token_id=self.video_token_id,
        vision_start_token_id=self.vision_start_token_id, vision_end_token_id=self.vision_end_token_id,
        tie_word_embeddings=t.tie_word_embeddings, torch_dtype="float32")


# ---- variants ----------------------------------------------------------------------------------
# The 3b/7b numbers are those of Qwen/Qwen2.5-VL-{3B,7B}-Instruct; their parameter counts
# (3,754,622,976 and 8,292,166,656) are checked by the backbone tests with `jax.eval_shape`.
# Token ids are fixed by the Qwen2.5-VL tokenizer; the processor expands each image pad into
# t*h*w/4 copies between vision_start and vision_end.
_QWEN_TOKEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                       vision_end_token_id=151653)
# The tiny tokenizer (`tiny.py`) keeps Qwen's special tokens in Qwen's order from id 0
# (<|endoftext|> 0, <|im_start|> 1, <|im_end|> 2, ..., <|video_pad|> 13): Qwen id - 151643.
_TINY_TOKEN_IDS = dict(image_token_id=12, video_token_id=13, vision_start_token_id=9, vision_end_token_id=10,
                       bos_token_id=0, eos_token_id=2, pad_token_id=0)
_RELEASED_VISION = dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420,
                        fullatt_block_indexes=(7, 15, 23, 31))

VARIANTS: dict[str, tuple[TextConfig, VisionConfig, dict]] = {
    "7b": (TextConfig(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                      intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False),
           VisionConfig(**_RELEASED_VISION, out_hidden_size=3584), _QWEN_TOKEN_IDS),
    "3b": (TextConfig(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                      intermediate_size=11008, vocab_size=151936, tie_word_embeddings=True),
           VisionConfig(**_RELEASED_VISION, out_hidden_size=2048), _QWEN_TOKEN_IDS),
    # Small enough for a 2-core CPU; keeps every structural feature of the real models (GQA,
    # window + full attention blocks, M-RoPE sections, untied head). Vocabulary: the tiny byte-level
    # BPE of `tiny.py` (1024 ids), so CPU demos can afford full logits.
    "tiny": (TextConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=1024, tie_word_embeddings=False, mrope_section=(2, 3, 3),
                        max_position_embeddings=4096),
             VisionConfig(depth=4, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64,
                          fullatt_block_indexes=(1, 3)), _TINY_TOKEN_IDS),
}
