"""Shared test helpers for the Qwen3-VL backbone: a tiny random HF model built by transformers
(torch, fp32, eager attention) and saved to a temp dir, cached per test process, plus input
builders and HF's forward with `mm_token_type_ids` (which HF's M-RoPE needs)."""

from __future__ import annotations

import dataclasses
import functools
import tempfile

import numpy as np
import torch
from transformers import Qwen3VLConfig as HFConfig
from transformers import Qwen3VLForConditionalGeneration

from roboalign_jax.models import qwen3_vl
from roboalign_jax.models.qwen3_vl import Qwen3VLConfig

TINY = Qwen3VLConfig.from_variant("tiny")
TINY_TIED = TINY.replace(text=dataclasses.replace(TINY.text, tie_word_embeddings=True))


def hf_config(config: Qwen3VLConfig = TINY) -> HFConfig:
  return HFConfig(**config.to_hf_dict())


@functools.lru_cache(maxsize=None)
def hf_tiny(tied: bool = False):
  """(directory, torch model) of a tiny random Qwen3-VL saved by transformers.

  Every parameter gets noise on top of HF's init so biases and norm scales are not trivially
  zero / one and every code path (q/k norms, DeepStack mergers, ...) shows in the outputs.
  """
  torch.manual_seed(1 if tied else 0)
  model = Qwen3VLForConditionalGeneration._from_config(hf_config(TINY_TIED if tied else TINY),
                                                        attn_implementation="eager")
  with torch.no_grad():
    for _, p in model.named_parameters():
      p.add_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.05))
  model.eval()
  out = tempfile.mkdtemp(prefix="qwen3_vl_tiny_hf_")
  model.save_pretrained(out, safe_serialization=True)
  return out, model


@functools.lru_cache(maxsize=None)
def loaded_tiny(tied: bool = False):
  """(our model, our params loaded from `hf_tiny()`'s directory, the HF torch model)."""
  hf_dir, hf_model = hf_tiny(tied)
  model, params = qwen3_vl.load_pretrained(hf_dir)
  return model, params, hf_model


def image_tokens(grid, merge: int = 2) -> int:
  return int(np.prod(grid)) // merge ** 2


def image_block(grid, config: Qwen3VLConfig = TINY) -> list[int]:
  return ([config.vision_start_token_id] + [config.image_token_id] * image_tokens(grid)
          + [config.vision_end_token_id])


def random_text(rng: np.random.Generator, n: int) -> list[int]:
  return rng.integers(20, 500, size=n).tolist()


def random_pixels(rng: np.random.Generator, grids, config: Qwen3VLConfig = TINY) -> np.ndarray:
  n = sum(int(np.prod(g)) for g in grids)
  return rng.normal(size=(n, config.vision.patch_dim)).astype(np.float32)


def left_pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
  """(input_ids, attention_mask) int32 [B, max len], rows right-aligned, padding id 0."""
  t = max(map(len, rows))
  ids = np.zeros((len(rows), t), np.int32)
  mask = np.zeros((len(rows), t), np.int32)
  for b, row in enumerate(rows):
    ids[b, t - len(row):] = row
    mask[b, t - len(row):] = 1
  return ids, mask


def hf_kwargs(input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> dict:
  """Torch inputs for HF's forward / generate, with `mm_token_type_ids` (1 on image tokens)."""
  ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
  kw = dict(input_ids=ids)
  if attention_mask is not None:
    kw["attention_mask"] = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
  if pixel_values is not None:
    kw["pixel_values"] = torch.as_tensor(np.asarray(pixel_values))
    kw["image_grid_thw"] = torch.as_tensor(np.asarray(image_grid_thw), dtype=torch.long)
    kw["mm_token_type_ids"] = (ids == TINY.image_token_id).int()
  return kw


def hf_forward(model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
  """HF logits and hidden states as NumPy."""
  with torch.no_grad():
    out = model(**hf_kwargs(input_ids, attention_mask, pixel_values, image_grid_thw), output_hidden_states=True)
  return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


def errors(ours, ref, mask=None) -> tuple[float, float]:
  """(max |ours - ref|, that / max |ref|) over positions where mask [B, T] is 1."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if mask is not None:
    sel = np.asarray(mask).astype(bool)
    ours, ref = ours[sel], ref[sel]
  diff = float(np.abs(ours - ref).max())
  return diff, diff / float(np.abs(ref).max())
