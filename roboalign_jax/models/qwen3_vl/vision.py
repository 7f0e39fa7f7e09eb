"""Qwen3-VL vision tower: patch embedding (a Conv3d with bias, as a matmul), a learned position
table bilinearly resampled to each image's grid, LayerNorm blocks with 2D rotary attention and a
GELU(tanh) MLP, the 2x2 patch merger into the text width, and the DeepStack mergers that turn the
outputs of blocks `deepstack_visual_indexes` into extra visual features for the decoder.

As in `models/qwen2_5_vl/vision.py`, all images are one packed sequence of patches (HF's
`pixel_values` layout) and everything HF derives from `grid_thw` with Python loops (per-patch
image, row and column, the resampling taps of the position table, the attention segments) is
computed here with gathers and cumulative sums, so the tower is one jitted computation with
`grid_thw` traced. Each frame of an image / video attends only to itself (HF's `cu_seqlens`:
h*w per frame, t times per entry): a [N, N] mask over the packed patches, or, when the caller
promises that every frame has `frame_patches` = h*w patches, attention per frame on
[frames, frame_patches] with no mask at all. Both paths give the same numbers.

The patch embedding, the packed-patch layout and the attention are Qwen2.5-VL's modules
(`qwen2_5_vl/vision.py`, `qwen2_5_vl/rope.py`): the same computation with other settings.

Parameter names mirror HF's module names (`blocks_3/attn/qkv/kernel` for `blocks.3.attn.qkv.weight`,
transposed), so the checkpoint converter maps them by path.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from roboalign_jax.models.qwen2_5_vl import rope
from roboalign_jax.models.qwen2_5_vl.layers import Linear
from roboalign_jax.models.qwen2_5_vl.vision import PatchEmbed, VisionAttention
from roboalign_jax.models.qwen3_vl.config import VisionConfig

_ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "silu": nn.silu,
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
}


def activation(name: str):
  if name not in _ACTIVATIONS:
    raise ValueError(f"vision hidden_act {name!r} not supported; allowed: {sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


# ---- layout of the packed patches ---------------------------------------------------------------
def patch_layout(grid_thw: jax.Array, num_patches: int, spatial_merge_size: int) -> dict[str, jax.Array]:
  """Where each of the concatenated patches of all images sits, as HF's processor emits them:
  Qwen2.5-VL's layout (`qwen2_5_vl.rope.vision_layout`) without attention windows.

  Per image, per frame, patches come in merge-block order (block_row, block_col, in_row, in_col).
  Returns int32 [num_patches] arrays: `row`, `col` (patch coordinates in the frame), `height`,
  `width` (its image's grid) and `frame` (a global id per image frame: the attention segment;
  -1 for patches past the last image, which valid input does not have).
  """
  return rope.vision_layout(grid_thw, num_patches, spatial_merge_size, merger_window=None)


def _axis_taps(index: jax.Array, size: jax.Array, side: int) -> tuple[jax.Array, jax.Array]:
  """Bilinear taps (align_corners=True) of `index` on an axis of length `size` into a table of
  `side` entries: int [N, 2] indices and f32 [N, 2] weights, in HF's float order."""
  src = index.astype(jnp.float32) * (side - 1) / jnp.maximum(size - 1, 1).astype(jnp.float32)
  floor = jnp.floor(src)
  offsets = jnp.arange(2, dtype=jnp.float32)
  taps = jnp.clip(floor.astype(jnp.int32)[:, None] + jnp.arange(2, dtype=jnp.int32), 0, side - 1)
  weights = jnp.maximum(1.0 - jnp.abs(src[:, None] - floor[:, None] - offsets), 0.0)
  return taps, weights


def position_taps(layout: dict[str, jax.Array], side: int) -> tuple[jax.Array, jax.Array]:
  """Gather indices into the flat side x side position table and their weights, int/f32 [N, 4]:
  the table resampled (bilinear, align_corners=True) to each patch's image grid."""
  h_taps, h_w = _axis_taps(layout["row"], layout["height"], side)
  w_taps, w_w = _axis_taps(layout["col"], layout["width"], side)
  n = h_taps.shape[0]
  indices = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(n, 4)
  weights = (h_w[:, :, None] * w_w[:, None, :]).reshape(n, 4)
  return indices, weights


# ---- modules -----------------------------------------------------------------------------------
class LayerNorm(nn.Module):
  """(x - mean) / sqrt(var + eps) * weight + bias over the last axis, in fp32, cast back to x's dtype."""
  eps: float = 1e-6
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (d,),
                        self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (d,),
                      self.param_dtype)
    xf = x.astype(jnp.float32)
    xf = xf - jnp.mean(xf, axis=-1, keepdims=True)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (xf * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class VisionMLP(nn.Module):
  config: VisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = Linear(self.config.intermediate_size, ("embed", "mlp"), name="linear_fc1", **kw)(x)
    h = activation(self.config.hidden_act)(h)
    return Linear(x.shape[-1], ("mlp", "embed"), name="linear_fc2", **kw)(h)


class VisionBlock(nn.Module):
  config: VisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cos, sin, mask):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # Attention (qkv, 2D rotary, proj) is Qwen2.5-VL's; the norms and the MLP are Qwen3's own.
    x = x + VisionAttention(self.config, name="attn", **kw)(
        LayerNorm(1e-6, self.param_dtype, name="norm1")(x), cos, sin, mask)
    return x + VisionMLP(self.config, name="mlp", **kw)(LayerNorm(1e-6, self.param_dtype, name="norm2")(x))


class PatchMerger(nn.Module):
  """Each merge x merge group of consecutive patches -> LayerNorm -> Linear -> GELU (exact) -> Linear.

  The norm runs per patch over `hidden_size` before the groups are concatenated (the final merger),
  or over the concatenated `merge^2 * hidden_size` (`postshuffle_norm`, the DeepStack mergers).
  """
  config: VisionConfig
  postshuffle_norm: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [N, C] -> [N / merge^2, out_hidden_size]."""
    width = x.shape[-1] * self.config.spatial_merge_size ** 2
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = LayerNorm(1e-6, self.param_dtype, name="norm")
    x = norm(x.reshape(-1, width)) if self.postshuffle_norm else norm(x).reshape(-1, width)
    x = Linear(width, ("embed", "mlp"), name="linear_fc1", **kw)(x)
    x = nn.gelu(x, approximate=False)
    return Linear(self.config.out_hidden_size, ("mlp", "embed"), name="linear_fc2", **kw)(x)


def check_grid(grid_thw, num_patches: int, spatial_merge_size: int, frame_patches: int | None = None) -> None:
  """Value checks of a concrete `grid_thw` against the packed patches (skipped when traced)."""
  if isinstance(grid_thw, jax.core.Tracer):
    return
  grid = np.asarray(grid_thw)
  if grid.ndim != 2 or grid.shape[1] != 3 or grid.shape[0] == 0:
    raise ValueError(f"grid_thw must be int [n_images, 3] with at least one image, got shape {grid.shape}")
  m = spatial_merge_size
  if np.any(grid < 1) or np.any(grid[:, 1:] % m):
    raise ValueError(f"grid_thw {grid.tolist()}: t, h, w must be >= 1 and h, w multiples of the spatial "
                     f"merge size {m}")
  total = int(np.prod(grid, axis=1).sum())
  if total != num_patches:
    raise ValueError(f"grid_thw {grid.tolist()} has {total} patches but pixel_values has {num_patches}")
  if frame_patches and np.any(grid[:, 1] * grid[:, 2] != frame_patches):
    raise ValueError(f"frame_patches={frame_patches} promises h*w = {frame_patches} for every image, but "
                     f"grid_thw is {grid.tolist()}")


class VisionTower(nn.Module):
  config: VisionConfig
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32
  remat: bool = False  # rematerialise each block in the backward pass

  @nn.compact
  def __call__(self, pixel_values: jax.Array, grid_thw: jax.Array,
               frame_patches: int | None = None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """pixel_values: [N, C*T*P*P] in HF's order; grid_thw: int [n_images, 3] (may be traced).

    Returns (merged [N / merge^2, out_hidden_size], deepstack: one [N / merge^2, out_hidden_size]
    per entry of `deepstack_visual_indexes`, in block order).
    frame_patches: a static promise that every frame has this many patches (h*w): attention then
    runs per frame with no [N, N] mask. Checked against `grid_thw` when that is concrete.
    """
    cfg = self.config
    n = pixel_values.shape[0]
    m = cfg.spatial_merge_size
    if n % (m * m):
      raise ValueError(f"{n} patches is not a multiple of merge^2 = {m * m}")
    if frame_patches and n % frame_patches:
      raise ValueError(f"frame_patches={frame_patches} does not divide the {n} patches of pixel_values")
    check_grid(grid_thw, n, m, frame_patches)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    x = PatchEmbed(cfg.hidden_size, use_bias=True, name="patch_embed", **kw)(pixel_values)
    lay = patch_layout(grid_thw, n, m)
    table = nn.Embed(cfg.num_position_embeddings, cfg.hidden_size, dtype=jnp.float32,
                     param_dtype=self.param_dtype, name="pos_embed",
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")))
    taps, weights = position_taps(lay, cfg.num_grid_per_side)
    x = x + jnp.sum(table(taps) * weights[:, :, None], axis=1).astype(x.dtype)
    cos, sin = rope.vision_cos_sin(lay["row"], lay["col"], cfg.head_dim, cfg.rope_theta)

    if frame_patches:
      frames, mask = (n // frame_patches, frame_patches), None
    else:
      frame = lay["frame"]
      # Patches past the last image (none in valid input) attend to themselves to stay finite.
      mask = ((frame[:, None] == frame[None, :]) & (frame[:, None] >= 0)) | jnp.eye(n, dtype=bool)
      frames, mask = (1, n), mask[None]
    x = x.reshape(*frames, -1)
    cos, sin = cos.reshape(*frames, -1), sin.reshape(*frames, -1)

    block = nn.remat(VisionBlock) if self.remat else VisionBlock
    levels = tuple(cfg.deepstack_visual_indexes)
    deepstack = []
    for i in range(cfg.depth):
      x = block(cfg, name=f"blocks_{i}", **kw)(x, cos, sin, mask)
      if i in levels:
        j = levels.index(i)
        deepstack.append(PatchMerger(cfg, postshuffle_norm=True, name=f"deepstack_merger_list_{j}", **kw)(
            x.reshape(n, -1)))
    merged = PatchMerger(cfg, postshuffle_norm=False, name="merger", **kw)(x.reshape(n, -1))
    return merged, tuple(deepstack)
