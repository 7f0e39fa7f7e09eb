"""Qwen2.5-VL shapes by variant: `tiny` (CPU tests and demo), `3b`, `7b` (the released models).

Field names follow the HF `config.json` so a config converts to and from it by name.
The 3b/7b numbers are those of Qwen/Qwen2.5-VL-{3B,7B}-Instruct; their parameter counts
(3,754,622,976 and 8,292,166,656) are checked by the backbone tests with `jax.eval_shape`.
"""

from __future__ import annotations

import ml_collections

QWEN2_5_VL_VARIANTS = ("tiny", "3b", "7b")

# Token ids fixed by the Qwen2.5-VL tokenizer; the processor expands each image pad
# into t*h*w/4 copies between vision_start and vision_end.
_QWEN_TOKEN_IDS = dict(
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
)

# The tiny tokenizer keeps Qwen's special tokens in Qwen's order from id 0
# (<|endoftext|> 0, <|im_start|> 1, <|im_end|> 2, ..., <|video_pad|> 13): Qwen id - 151643.
_TINY_TOKEN_IDS = dict(
    image_token_id=12,
    video_token_id=13,
    vision_start_token_id=9,
    vision_end_token_id=10,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=0,
)


def _vision(*, depth: int, hidden_size: int, num_heads: int, intermediate_size: int,
            out_hidden_size: int, fullatt_block_indexes: tuple[int, ...]) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      depth=depth,
      hidden_size=hidden_size,
      num_heads=num_heads,
      intermediate_size=intermediate_size,
      out_hidden_size=out_hidden_size,
      in_channels=3,
      patch_size=14,
      temporal_patch_size=2,
      spatial_merge_size=2,
      window_size=112,  # pixels: 8x8 patches of 14 px
      fullatt_block_indexes=fullatt_block_indexes,
      rms_norm_eps=1e-6,
  ))


def _text(*, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
          num_key_value_heads: int, intermediate_size: int, vocab_size: int,
          tie_word_embeddings: bool, mrope_section: tuple[int, int, int],
          max_position_embeddings: int) -> ml_collections.ConfigDict:
  head_dim = hidden_size // num_attention_heads
  if sum(mrope_section) * 2 != head_dim:
    raise ValueError(f"mrope_section {mrope_section} must sum to head_dim/2 = {head_dim // 2}")
  return ml_collections.ConfigDict(dict(
      hidden_size=hidden_size,
      num_hidden_layers=num_hidden_layers,
      num_attention_heads=num_attention_heads,
      num_key_value_heads=num_key_value_heads,
      intermediate_size=intermediate_size,
      vocab_size=vocab_size,
      tie_word_embeddings=tie_word_embeddings,
      rope_theta=1_000_000.0,
      mrope_section=mrope_section,
      rms_norm_eps=1e-6,
      max_position_embeddings=max_position_embeddings,
  ))


def qwen2_5_vl(variant: str) -> ml_collections.ConfigDict:
  """Returns `ConfigDict(vision=..., text=..., <token ids>)` for a Qwen2.5-VL variant."""
  if variant == "7b":
    text = _text(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                 tie_word_embeddings=False, mrope_section=(16, 24, 24),
                 max_position_embeddings=128000)
    vision = _vision(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420,
                     out_hidden_size=3584, fullatt_block_indexes=(7, 15, 23, 31))
  elif variant == "3b":
    text = _text(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16,
                 num_key_value_heads=2, intermediate_size=11008, vocab_size=151936,
                 tie_word_embeddings=True, mrope_section=(16, 24, 24),
                 max_position_embeddings=128000)
    vision = _vision(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420,
                     out_hidden_size=2048, fullatt_block_indexes=(7, 15, 23, 31))
  elif variant == "tiny":
    # Small enough for a 2-core CPU; keeps every structural feature of the real models
    # (GQA, window + full attention blocks, M-RoPE sections, untied head).
    # Vocabulary: the tiny byte-level BPE of `models/qwen2_5_vl/tiny.py` (1024 ids, the Qwen
    # special tokens at ids 0..13 in Qwen's order), so CPU demos can afford full logits.
    text = _text(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, vocab_size=1024,
                 tie_word_embeddings=False, mrope_section=(2, 3, 3),
                 max_position_embeddings=4096)
    vision = _vision(depth=4, hidden_size=32, num_heads=2, intermediate_size=64,
                     out_hidden_size=64, fullatt_block_indexes=(1, 3))
  else:
    raise ValueError(f"unknown Qwen2.5-VL variant {variant!r}; allowed: {list(QWEN2_5_VL_VARIANTS)}")
  ids = _TINY_TOKEN_IDS if variant == "tiny" else _QWEN_TOKEN_IDS
  return ml_collections.ConfigDict(dict(
      family="qwen2_5_vl", variant=variant, text=text, vision=vision, **ids))
