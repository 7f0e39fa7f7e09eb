"""Rotary position embeddings of the Qwen3-VL text decoder: *interleaved* multimodal RoPE, and the
3D position ids of a mixed image/text sequence.

Interleaved M-RoPE. The head_dim/2 rotary frequencies are shared out over the three position rows
(t, h, w) round-robin instead of in contiguous blocks as in Qwen2.5-VL: frequency j reads

    h  if j % 3 == 1 and j < 3 * section[1]
    w  if j % 3 == 2 and j < 3 * section[2]
    t  otherwise

so with the released sections [24, 20, 20] and 64 frequencies the layout is t h w t h w ... t h w
t t t t (the last four are t). The angle half is then duplicated for rotate-half, as in HF's
`Qwen3VLTextRotaryEmbedding.recomposition_frequencies`.

Position ids. Qwen3-VL's `get_rope_index` places an image the same way our Qwen2.5-VL port does:
a text token advances every row by one; an image whose block starts at running position s puts its
merged-grid token (t, r, c) at (s + t, s + r, s + c), and the text after it resumes at
s + max(grid_h, grid_w) / merge. Padding gets 0 and `rope_deltas = max(position) + 1 - n_real`.
That rule is `qwen2_5_vl.rope.mrope_position_ids`, reused here (traceable: no Python loop over
samples or images). HF derives the image runs from `mm_token_type_ids`; we derive them from
`image_token_id` on real (attention-mask 1) tokens, which is what the processor's type ids say.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from roboalign_jax.models.qwen2_5_vl.rope import apply_rotary, inv_frequencies, mrope_position_ids, text_positions

__all__ = ["apply_rotary", "frequency_rows", "interleaved_mrope_cos_sin", "mrope_position_ids",
           "text_positions"]


def frequency_rows(head_dim: int, mrope_section: tuple[int, ...]) -> np.ndarray:
  """Which position row (0 = t, 1 = h, 2 = w) each of the head_dim/2 frequencies reads. int [D/2]"""
  j = np.arange(head_dim // 2)
  rows = np.zeros_like(j)
  rows[(j % 3 == 1) & (j < 3 * mrope_section[1])] = 1
  rows[(j % 3 == 2) & (j < 3 * mrope_section[2])] = 2
  return rows


def interleaved_mrope_cos_sin(position_ids: jax.Array, head_dim: int, theta: float,
                              mrope_section: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """position_ids: int [3, B, L] (t, h, w rows) -> cos, sin: f32 [B, L, head_dim]."""
  inv = inv_frequencies(head_dim, theta)
  rows = frequency_rows(head_dim, mrope_section)
  # pos[..., j] = position_ids[rows[j]]: each frequency's own row, then the same f32 product as HF.
  pos = jnp.moveaxis(position_ids[rows], 0, -1).astype(jnp.float32)  # [B, L, D/2]
  angles = pos * inv
  emb = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)
