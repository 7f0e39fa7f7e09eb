"""Fixed-shape SFT batches from the data pipeline's tokenised FAST/conversation batches.

The jitted step compiles once per input shape, so the pipeline's batches (padded to their
longest sequence, with however many images their samples hold) are brought to a few shapes:

  * tokens are right-padded to the next multiple of `pad_multiple` (length bucketing at the
    batch level: few compiled lengths, padding bounded by pad_multiple - 1 per row beyond the
    batch's own spread), or to exactly `max_len` when that is set (one shape, multi-process);
  * images are padded with blank images of the first image's grid up to a multiple of the
    batch size, or to exactly `num_images`; the model never reads their features (no image-pad
    token points at them).

The padding fraction is measured by the step from `attention_mask` (1 - real / all tokens).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ARRAY_KEYS = ("input_ids", "attention_mask", "loss_mask", "pixel_values", "image_grid_thw")


def padded_length(length: int, pad_multiple: int, max_len: int = 0) -> int:
  """The bucketed length of a batch whose longest sequence has `length` tokens."""
  if max_len:
    if length > max_len:
      raise ValueError(f"a sequence of {length} tokens exceeds config.data.max_seq_len={max_len}")
    return max_len
  if pad_multiple <= 0:
    raise ValueError(f"config.sft.pad_multiple={pad_multiple}; expected a positive integer")
  return -(-length // pad_multiple) * pad_multiple


def shape_batch(batch: dict[str, Any], *, pad_multiple: int, max_len: int = 0, num_images: int = 0,
                patch_dim: int = 1176) -> dict[str, np.ndarray]:
  """Pipeline batch -> model batch with bucketed shapes (B rows, T tokens, N images of P patches).

  In:  input_ids / attention_mask / loss_mask int [B, T0] (right-padded), pixel_values float
       [sum of patches, patch_dim] and image_grid_thw int [n, 3] (absent when no sample has images).
  Out: input_ids / attention_mask / loss_mask int32 [B, T], pixel_values float32 [N*P', patch_dim],
       image_grid_thw int32 [N, 3] with N = num_images, or n rounded up to a multiple of B (at least B).
  Strings and per-sample metadata are dropped: the step only needs arrays.
  """
  for key in ("input_ids", "attention_mask", "loss_mask"):
    if key not in batch:
      raise ValueError(f"SFT batch lacks {key!r}; expected tokenised samples (config.data.sample='fast_sft' "
                       "with config.data.processor_dir set)")
  ids = np.asarray(batch["input_ids"], np.int32)
  b, t0 = ids.shape
  t = padded_length(t0, pad_multiple, max_len)
  out = {}
  for key in ("input_ids", "attention_mask", "loss_mask"):
    values = np.asarray(batch[key], np.int32)
    if values.shape != (b, t0):
      raise ValueError(f"SFT batch {key} has shape {values.shape}; expected {(b, t0)} like input_ids")
    out[key] = np.pad(values, ((0, 0), (0, t - t0)))  # pad id 0 under attention_mask 0
  grid = batch.get("image_grid_thw")
  pixels = batch.get("pixel_values")
  if grid is None or len(grid) == 0:
    grid = np.zeros((0, 3), np.int32)
    pixels = np.zeros((0, patch_dim), np.float32)
  grid = np.asarray(grid, np.int32)
  pixels = np.asarray(pixels, np.float32)
  if pixels.shape[0] != int(np.prod(grid, axis=1).sum()):
    raise ValueError(f"SFT batch pixel_values has {pixels.shape[0]} patches but image_grid_thw "
                     f"{grid.tolist()} describes {int(np.prod(grid, axis=1).sum())}")
  if num_images and len(grid) > num_images:
    raise ValueError(f"an SFT batch holds {len(grid)} images, more than config.sft.images_per_batch={num_images}")
  n = num_images or max(b, -(-len(grid) // b) * b)
  # A blank image the size of the first real one (2x2 merged patches when there is none).
  blank = grid[0] if len(grid) else np.array([1, 2, 2], np.int32)
  missing = n - len(grid)
  out["image_grid_thw"] = np.concatenate([grid, np.tile(blank, (missing, 1))]).astype(np.int32)
  out["pixel_values"] = np.concatenate(
      [pixels, np.zeros((missing * int(np.prod(blank)), pixels.shape[1]), np.float32)])
  return out


def frame_patches(image_grid_thw: np.ndarray, mode: str) -> int | None:
  """The static `frame_patches` for the model (h*w when every image shares its grid), by mode:
  "on" (required; error otherwise), "off" (never), "auto" (when possible)."""
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"config.model.per_image_vision={mode!r}; expected 'auto', 'on' or 'off'")
  if mode == "off" or len(image_grid_thw) == 0:
    return None
  hw = image_grid_thw[:, 1] * image_grid_thw[:, 2]
  same = bool(np.all(hw == hw[0]) and np.all(image_grid_thw[:, 0] == 1))
  if mode == "on" and not same:
    raise ValueError(f"config.model.per_image_vision='on' needs every image of a batch to have one patch grid; "
                     f"got {np.unique(image_grid_thw, axis=0).tolist()} (set config.data.image_size / the "
                     "processor's max_pixels so all images resize to one size, or use 'auto'/'off')")
  return int(hw[0]) if same else None
