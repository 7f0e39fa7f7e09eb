"""Rotary position embeddings of Qwen2.5-VL: the text decoder's multimodal RoPE (M-RoPE) and
the vision tower's 2D rotary, plus the 3D position ids of a mixed image/text sequence.

Everything here is traceable: position ids are derived from `input_ids`, `image_grid_thw` and
`attention_mask` with cumulative sums and gathers (no Python loop over samples or images), so
the whole forward stays one jitted computation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rotate_half(x: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


@jax.named_scope("rotary")  # names its ops in profiles (benchmarks/timing.py:xla_profile)
def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x: [..., L, H, D]; cos/sin: [..., L, D] (broadcast over heads). Computed in fp32."""
  dtype = x.dtype
  x = x.astype(jnp.float32)
  cos, sin = cos[..., None, :], sin[..., None, :]
  return (x * cos + rotate_half(x) * sin).astype(dtype)


def inv_frequencies(dim: int, theta: float) -> jax.Array:
  """`1 / theta^(2i/dim)` for i < dim/2, fp32. [dim // 2]"""
  return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def mrope_cos_sin(position_ids: jax.Array, head_dim: int, theta: float,
                  mrope_section: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """M-RoPE angles. position_ids: int [3, B, L] (t, h, w rows) -> cos, sin: f32 [B, L, head_dim].

  The head_dim/2 frequencies are split into contiguous blocks `mrope_section` (e.g. [16, 24, 24]);
  block i takes its angle from position row i, then the half is duplicated for rotate-half.
  """
  inv = inv_frequencies(head_dim, theta)
  angles = position_ids.astype(jnp.float32)[..., None] * inv  # [3, B, L, D/2]
  bounds = [0, mrope_section[0], mrope_section[0] + mrope_section[1], head_dim // 2]
  picked = jnp.concatenate([angles[i, ..., bounds[i]:bounds[i + 1]] for i in range(3)], axis=-1)
  emb = jnp.concatenate([picked, picked], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def text_positions(attention_mask: jax.Array) -> jax.Array:
  """1D positions counting only real tokens (left padding supported). [B, L] -> int32 [B, L]"""
  mask = attention_mask.astype(jnp.int32)
  return jnp.where(mask > 0, jnp.cumsum(mask, axis=-1) - 1, 0)


def mrope_position_ids(input_ids: jax.Array, attention_mask: jax.Array, image_grid_thw: jax.Array | None,
                       image_token_id: int, spatial_merge_size: int) -> tuple[jax.Array, jax.Array]:
  """3D position ids of a batch of image/text sequences, and the rope delta per sample.

  input_ids, attention_mask: [B, L]; image_grid_thw: int [N_images, 3] for the images in the
  order their pad tokens appear in the row-major flattened batch.
  Returns (position_ids int32 [3, B, L], rope_deltas int32 [B]). Text tokens advance all three
  rows by 1; an image whose block starts at position s puts token (t, r, c) of its merged grid at
  (s + t, s + r, s + c) and the next token at s + max(grid_h, grid_w) / merge. Padding gets 0.
  `rope_deltas = max(position) + 1 - n_real`: decoding continues at `n_real + delta`.
  """
  mask = attention_mask.astype(jnp.int32)
  B, L = input_ids.shape
  is_img = (input_ids == image_token_id) & (mask > 0)
  if image_grid_thw is None or image_grid_thw.shape[0] == 0:
    pos = text_positions(mask)
    pos3 = jnp.broadcast_to(pos[None], (3, B, L))
    deltas = jnp.zeros((B,), jnp.int32)
    return pos3.astype(jnp.int32), deltas
  grid = image_grid_thw.astype(jnp.int32)
  gt, gh, gw = grid[:, 0], grid[:, 1] // spatial_merge_size, grid[:, 2] // spatial_merge_size
  ntok = gt * gh * gw  # tokens per image
  starts = jnp.cumsum(ntok) - ntok
  flat_img = is_img.reshape(-1)
  ordinal = jnp.cumsum(flat_img.astype(jnp.int32)) - 1  # global index of each image token
  img = jnp.clip(jnp.searchsorted(jnp.cumsum(ntok), ordinal, side="right"), 0, grid.shape[0] - 1)
  k = ordinal - starts[img]  # index inside its image, row-major over (t, h, w)
  lh, lw = gh[img], gw[img]
  ti, hi, wi = k // (lh * lw), (k // lw) % lh, k % lw
  last_of_image = flat_img & (k == ntok[img] - 1)
  # How far each real token moves the running position: text 1, an image max(h, w) at its end.
  advance = jnp.where(flat_img, jnp.where(last_of_image, jnp.maximum(lh, lw), 0), 1)
  advance = (advance * mask.reshape(-1)).reshape(B, L)
  before = jnp.cumsum(advance, axis=-1) - advance  # running position when the token starts
  ti, hi, wi = (a.reshape(B, L) for a in (ti, hi, wi))
  rows = [jnp.where(is_img, before + off, before) for off in (ti, hi, wi)]
  pos3 = jnp.stack(rows).astype(jnp.int32)
  pos3 = jnp.where(mask[None] > 0, pos3, 0)
  deltas = pos3.max(axis=(0, 2)) + 1 - mask.sum(-1)
  return pos3, deltas.astype(jnp.int32)


def vision_layout(grid_thw: jax.Array, num_patches: int, spatial_merge_size: int,
                  merger_window: int | None) -> dict[str, jax.Array]:
  """Per-patch layout of the concatenated patches of all images, as HF's processor emits them.

  Patches come in merge-window order: for each image, frame t, merged row bh, merged col bw,
  then the 2x2 patches (mh, mw) inside. Returns int32 [num_patches] arrays:
  `row`, `col` (patch coordinates for the 2D rotary), `height`, `width` (its image's grid),
  `frame` (a global id per image frame: the full-attention segment) and, unless `merger_window`
  is None (Qwen3-VL has no windows), `window` (the 8x8-patch window inside its frame: with
  `frame`, the window-attention segment). Patches past the last image get frame -1.
  """
  m = spatial_merge_size
  grid = grid_thw.astype(jnp.int32)
  t, h, w = grid[:, 0], grid[:, 1], grid[:, 2]
  per_img = t * h * w
  ends = jnp.cumsum(per_img)
  p = jnp.arange(num_patches, dtype=jnp.int32)
  img = jnp.clip(jnp.searchsorted(ends, p, side="right"), 0, grid.shape[0] - 1)
  valid = p < ends[-1]
  q = p - (ends - per_img)[img]
  hw = (h * w)[img]
  ti, r = q // hw, q % hw
  unit, inner = r // (m * m), r % (m * m)
  units_w = w[img] // m
  bh, bw = unit // units_w, unit % units_w
  row, col = bh * m + inner // m, bw * m + inner % m
  frame_base = jnp.cumsum(t) - t
  frame = jnp.where(valid, frame_base[img] + ti, -1)
  layout = dict(row=row, col=col, height=h[img], width=w[img], frame=frame)
  if merger_window is not None:
    wins_w = -(-units_w // merger_window)  # ceil
    layout["window"] = (bh // merger_window) * wins_w + bw // merger_window
  return layout


def vision_cos_sin(row: jax.Array, col: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """2D rotary for vision patches. row, col: int [N] -> cos, sin: f32 [N, head_dim].

  head_dim/4 frequencies over head_dim/2; h-angles then w-angles, duplicated for rotate-half.
  """
  inv = inv_frequencies(head_dim // 2, theta)
  ah = row.astype(jnp.float32)[:, None] * inv
  aw = col.astype(jnp.float32)[:, None] * inv
  hw = jnp.concatenate([ah, aw], axis=-1)
  emb = jnp.concatenate([hw, hw], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)
