"""The tiny Qwen2.5-VL (and Qwen3-VL) every test shares, written once per test process through the backbone
registry: a processor directory (tokenizer + image processor) and a random checkpoint directory.
Treat both as read-only."""

import functools
import tempfile

from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.models.qwen2_5_vl import tiny


@functools.lru_cache(maxsize=None)
def processor_dir(max_pixels: int = 112 * 112) -> str:
  """Tokenizer (1024-id byte-level BPE with Qwen's special tokens) + image processor config."""
  out = tempfile.mkdtemp(prefix="tiny_qwen_processor_")
  tiny.write_tokenizer(out)
  tiny.write_image_processor_config(out, max_pixels=max_pixels)
  return out


@functools.lru_cache(maxsize=None)
def checkpoint_dir(max_pixels: int = 112 * 112, seed: int = 0) -> str:
  """A complete random checkpoint (weights, config, tokenizer, image processor)."""
  return backbone_lib.family("qwen2_5_vl").write_tiny(tempfile.mkdtemp(prefix="tiny_qwen_"), seed=seed,
                                                      max_pixels=max_pixels)


@functools.lru_cache(maxsize=None)
def qwen3_processor_dir(max_pixels: int = 64 * 32 * 32) -> str:
  """The same tokenizer with Qwen3-VL's chat format + Qwen3-VL's image processor settings."""
  from roboalign_jax.models.qwen3_vl import tiny as qwen3_tiny
  out = tempfile.mkdtemp(prefix="tiny_qwen3_processor_")
  qwen3_tiny.write_tokenizer(out)
  qwen3_tiny.write_image_processor_config(out, max_pixels=max_pixels)
  return out


@functools.lru_cache(maxsize=None)
def qwen3_checkpoint_dir(max_pixels: int = 64 * 32 * 32, seed: int = 0) -> str:
  """A complete random tiny Qwen3-VL checkpoint (weights, config, tokenizer, image processor)."""
  return backbone_lib.family("qwen3_vl").write_tiny(tempfile.mkdtemp(prefix="tiny_qwen3_"), seed=seed,
                                                    max_pixels=max_pixels)


def extended_tokenizer():
  """(the tiny HF tokenizer with the 2048 FAST action tokens added, its ActionVocab); a fresh copy."""
  from transformers import AutoTokenizer

  from roboalign_jax.models.qwen2_5_vl.vocab_extension import add_action_tokens
  tokenizer = AutoTokenizer.from_pretrained(processor_dir())
  return tokenizer, add_action_tokens(tokenizer)
