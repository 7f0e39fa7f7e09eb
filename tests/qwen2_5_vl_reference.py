"""Shared test helpers for the Qwen2.5-VL backbone: a tiny random HF model built by transformers
(torch, fp32) and saved to a temp dir, cached per test process, plus input builders."""

from __future__ import annotations

import functools
import tempfile

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig as HFConfig
from transformers import Qwen2_5_VLForConditionalGeneration

from roboalign_jax.models import qwen2_5_vl
from roboalign_jax.models.qwen2_5_vl import Qwen2_5_VLConfig, tiny

TINY = Qwen2_5_VLConfig.from_variant("tiny")


def hf_config(config: Qwen2_5_VLConfig = TINY) -> HFConfig:
  return HFConfig(**config.to_hf_dict())


@functools.lru_cache(maxsize=None)
def hf_tiny(tied: bool = False):
  """(directory, torch model) of a tiny random Qwen2.5-VL saved by transformers.

  Every parameter gets noise on top of HF's init so biases and norm scales are not trivially
  zero / one and every code path shows in the outputs.
  """
  config = TINY
  if tied:
    config = config.replace(text=config.text.__class__(**{**config.text.__dict__, "tie_word_embeddings": True}))
  torch.manual_seed(0)
  model = Qwen2_5_VLForConditionalGeneration._from_config(hf_config(config), attn_implementation="eager")
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.add_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.05))
  model.eval()
  out = tempfile.mkdtemp(prefix="qwen_tiny_hf_")
  model.save_pretrained(out, safe_serialization=True)
  tiny.write_tokenizer(out)
  tiny.write_image_processor_config(out)
  return out, model


@functools.lru_cache(maxsize=None)
def loaded_tiny():
  """(our model, our params loaded from `hf_tiny()`'s directory, the HF torch model)."""
  hf_dir, hf_model = hf_tiny()
  model, params = qwen2_5_vl.load_pretrained(hf_dir)
  return model, params, hf_model


def image_tokens(grid, merge: int = 2) -> int:
  return int(np.prod(grid)) // merge ** 2


def image_block(grid, config: Qwen2_5_VLConfig = TINY) -> list[int]:
  return ([config.vision_start_token_id] + [config.image_token_id] * image_tokens(grid)
          + [config.vision_end_token_id])


def random_text(rng: np.random.Generator, n: int) -> list[int]:
  return rng.integers(20, 500, size=n).tolist()


def random_pixels(rng: np.random.Generator, grids, config: Qwen2_5_VLConfig = TINY) -> np.ndarray:
  n = sum(int(np.prod(g)) for g in grids)
  return rng.normal(size=(n, config.vision.patch_dim)).astype(np.float32)


def hf_forward(model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
  """HF logits and hidden states as NumPy (M-RoPE positions enabled via mm_token_type_ids)."""
  ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
  kw = dict(output_hidden_states=True)
  if attention_mask is not None:
    kw["attention_mask"] = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
  if pixel_values is not None:
    kw["pixel_values"] = torch.as_tensor(np.asarray(pixel_values))
    kw["image_grid_thw"] = torch.as_tensor(np.asarray(image_grid_thw), dtype=torch.long)
    kw["mm_token_type_ids"] = (ids == TINY.image_token_id).int()
  with torch.no_grad():
    out = model(input_ids=ids, **kw)
  return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


def max_rel_err(ours, ref, mask=None) -> float:
  """max |ours - ref| / max |ref| over positions where mask [B, T] is 1."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if mask is not None:
    sel = np.asarray(mask).astype(bool)
    ours, ref = ours[sel], ref[sel]
  return float(np.abs(ours - ref).max() / np.abs(ref).max())
