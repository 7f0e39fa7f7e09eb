"""Qwen2.5-VL vision tower: patch embedding, blocks with window / full attention and 2D rotary,
and the 2x2 patch merger into the text width.

All images of a batch are one packed sequence of patches (HF's `pixel_values` layout). Instead
of HF's gather into window order and per-window loop, each patch gets a segment id (its image
frame, and its 8x8-patch window inside the frame) and attention is masked to equal segments:
attention is permutation-equivariant and the merger's 2x2 groups are contiguous either way, so
the result is the same, computed in one jitted pass with no loop over images or windows.

The packed mask is [N, N] over every patch of the batch, so its cost grows with the square of
the batch. When all frames have the same number of patches (robot data: fixed camera
resolutions), pass `frame_patches` (= h*w of one frame): the patches are then viewed as
[frames, frame_patches] and attended per frame, with no mask at all in the full-attention
blocks (so the fused/flash kernels apply) and a [frame_patches, frame_patches] window mask in
the others. Both paths give the same numbers.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from roboalign_jax.models.qwen2_5_vl import rope
from roboalign_jax.models.qwen2_5_vl.config import VisionConfig
from roboalign_jax.models.qwen2_5_vl.layers import Linear, RMSNorm, SwiGLU, grouped_attention


class PatchEmbed(nn.Module):
  """HF's Conv3d with kernel = stride = (T, P, P) on one patch is a matmul on the flat patch
  (C, T, P, P); without bias here, with bias in Qwen3-VL."""
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  use_bias: bool = False

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:
    """patches: [N, C*T*P*P] -> [N, features]."""
    return Linear(self.features, ("patch", "embed"), use_bias=self.use_bias, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="proj")(patches.astype(self.dtype))


class VisionAttention(nn.Module):
  cfg: VisionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array | None) -> jax.Array:
    """x: [F, L, C] (F independent sequences of L patches); cos/sin: [F, L, head_dim];
    mask: bool [F, L, L] (True = may attend) or None (all of a sequence) -> [F, L, C]."""
    f, n, c = x.shape
    heads = self.cfg.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = Linear(3 * c, ("embed", "heads"), name="qkv", **kw)(x)
    q, k, v = jnp.split(qkv.reshape(f, n, 3, heads, c // heads), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [F, L, heads, head_dim]
    q = rope.apply_rotary(q, cos, sin)
    k = rope.apply_rotary(k, cos, sin)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # heads first, as grouped_attention takes them
    out = grouped_attention(q, k, v, None if mask is None else mask[:, None])
    return Linear(c, ("heads", "embed"), name="proj", **kw)(out.reshape(f, n, c))


class VisionBlock(nn.Module):
  cfg: VisionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cos, sin, mask):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x + VisionAttention(self.cfg, name="attn", **kw)(
        RMSNorm(1e-6, self.param_dtype, name="norm1")(x), cos, sin, mask)
    x = x + SwiGLU(self.cfg.intermediate_size, use_bias=True, name="mlp", **kw)(
        RMSNorm(1e-6, self.param_dtype, name="norm2")(x))
    return x


class PatchMerger(nn.Module):
  """RMSNorm, then each 2x2 group of consecutive patches -> Linear -> GELU (exact) -> Linear."""
  cfg: VisionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [N, C] -> [N / merge^2, out_hidden_size]."""
    unit = self.cfg.spatial_merge_size ** 2
    width = x.shape[-1] * unit
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = RMSNorm(1e-6, self.param_dtype, name="ln_q")(x).reshape(-1, width)
    x = Linear(width, ("embed", "mlp"), name="mlp_0", **kw)(x)
    x = nn.gelu(x, approximate=False)
    return Linear(self.cfg.out_hidden_size, ("mlp", "embed"), name="mlp_2", **kw)(x)


class VisionTower(nn.Module):
  cfg: VisionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, pixel_values: jax.Array, grid_thw: jax.Array,
               frame_patches: int | None = None) -> jax.Array:
    """pixel_values: [N, C*T*P*P] in HF's order; grid_thw: int [n_images, 3] -> [N / 4, out_hidden].

    N must be a multiple of merge^2 and equal sum(t*h*w) (checked by the caller when concrete).
    frame_patches: a static promise that every frame has this many patches (h*w); see the
    module docstring. The caller checks it against `grid_thw` when that is concrete.
    """
    cfg = self.cfg
    n = pixel_values.shape[0]
    x = PatchEmbed(cfg.hidden_size, self.dtype, self.param_dtype, name="patch_embed")(pixel_values)
    lay = rope.vision_layout(grid_thw, n, cfg.spatial_merge_size, cfg.merger_window)
    cos, sin = rope.vision_cos_sin(lay["row"], lay["col"], cfg.head_dim, cfg.rope_theta)
    if frame_patches:
      if n % frame_patches:
        raise ValueError(f"frame_patches={frame_patches} does not divide the {n} patches of pixel_values")
      frames = (n // frame_patches, frame_patches)
      window = lay["window"].reshape(frames)
      full_mask, window_mask = None, window[:, :, None] == window[:, None, :]
    else:
      frames = (1, n)
      same_frame = (lay["frame"][:, None] == lay["frame"][None, :]) & (lay["frame"][:, None] >= 0)
      same_window = same_frame & (lay["window"][:, None] == lay["window"][None, :])
      # Patches past the last image (none in valid input) attend to themselves to stay finite.
      eye = jnp.eye(n, dtype=bool)
      full_mask, window_mask = (same_frame | eye)[None], (same_window | eye)[None]
    x = x.reshape(*frames, -1)
    cos, sin = cos.reshape(*frames, -1), sin.reshape(*frames, -1)
    block = nn.remat(VisionBlock) if self.remat else VisionBlock
    for i in range(cfg.depth):
      mask = full_mask if i in cfg.fullatt_block_indexes else window_mask
      x = block(cfg, self.dtype, self.param_dtype, name=f"blocks_{i}")(x, cos, sin, mask)
    return PatchMerger(cfg, self.dtype, self.param_dtype, name="merger")(x.reshape(n, -1))
