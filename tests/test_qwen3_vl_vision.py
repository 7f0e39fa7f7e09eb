"""Parity of the Flax Qwen3-VL vision tower with HF transformers' `Qwen3VLVisionModel` (torch,
fp32, eager attention) on a tiny random tower: the merged output and every DeepStack feature
within 1e-5 x max|reference|, for single and mixed-size images, videos, grids larger than the
8x8 position table and one merge block high; the per-frame path and the jitted call with a
traced grid against the packed eager call."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from qwen2_5_vl_reference import max_rel_err
from roboalign_jax.models.qwen3_vl.config import Qwen3VLConfig
from roboalign_jax.models.qwen3_vl.vision import VisionTower, check_grid, patch_layout

TINY = Qwen3VLConfig.from_variant("tiny")
VISION = TINY.vision
TOL = 1e-5


def hf_to_params(state_dict) -> dict:
  """HF vision state_dict -> our param tree: `blocks.3.attn.qkv.weight` -> blocks_3/attn/qkv/kernel
  (transposed; the Conv3d kernel flattened over C, T, P, P), `pos_embed.weight` -> embedding."""
  params: dict = {}
  for name, value in state_dict.items():
    parts = name.split(".")
    path = []
    for part in parts[:-1]:
      if part.isdigit():
        path[-1] = f"{path[-1]}_{part}"
      else:
        path.append(part)
    leaf, value = parts[-1], value.detach().numpy()
    if parts[0] == "pos_embed":
      leaf = "embedding"
    elif leaf == "weight" and value.ndim >= 2:
      leaf, value = "kernel", value.reshape(value.shape[0], -1).T
    node = params
    for key in path:
      node = node.setdefault(key, {})
    node[leaf] = jnp.asarray(value)
  return params


@functools.lru_cache(maxsize=None)
def hf_tower():
  """(HF torch tower, our params): HF init plus noise on every parameter, large enough that the
  MLP pre-activations reach |x| ~ 1 (so GELU tanh vs erf shows at ~3e-5, above TOL)."""
  torch.manual_seed(0)
  hf_cfg = transformers.Qwen3VLConfig(**TINY.to_hf_dict()).vision_config
  model = transformers.Qwen3VLVisionModel._from_config(hf_cfg, attn_implementation="eager")
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.15))
  model.eval()
  return model, hf_to_params(model.state_dict())


def hf_forward(model, pixels, grid):
  with torch.no_grad():
    out = model(torch.as_tensor(pixels), grid_thw=torch.as_tensor(np.asarray(grid), dtype=torch.long))
  return out.pooler_output.numpy(), [d.numpy() for d in out.deepstack_features]


def random_pixels(rng, grid):
  n = int(np.prod(np.asarray(grid), axis=1).sum())
  return rng.normal(size=(n, VISION.patch_dim)).astype(np.float32)


TOWER = VisionTower(VISION)


@functools.partial(jax.jit, static_argnames="frame_patches")
def jitted(params, pixels, grid, frame_patches=None):
  return TOWER.apply({"params": params}, pixels, grid, frame_patches)


def _errors(out, ref):
  merged, deep = out
  ref_merged, ref_deep = ref
  assert merged.shape == ref_merged.shape and len(deep) == len(ref_deep) == len(VISION.deepstack_visual_indexes)
  return [max_rel_err(merged, ref_merged)] + [max_rel_err(d, r) for d, r in zip(deep, ref_deep)]


def test_param_tree_matches_init():
  """The converted HF state_dict has exactly the tree (names, shapes) our module creates."""
  _, params = hf_tower()
  grid = jnp.array([[1, 4, 4]], jnp.int32)
  shapes = jax.eval_shape(lambda: nn.unbox(TOWER.init(jax.random.key(0), jnp.zeros((16, VISION.patch_dim)),
                                                      grid)["params"]))
  ours = jax.tree.map(lambda a: a.shape, shapes)
  theirs = jax.tree.map(lambda a: a.shape, params)
  assert ours == theirs


@pytest.mark.parametrize("grid", [
    [[1, 4, 6]],                # one image
    [[1, 4, 4], [1, 6, 8]],     # two images of different sizes in one call
    [[1, 10, 12]],              # larger than the 8x8 position table: upsampled
    [[1, 2, 8]],                # one merge block high (h - 1 = 1 in the resampling)
    [[2, 4, 6], [1, 6, 4]],     # a 2-frame video (each frame its own attention segment) and an image
], ids=["one", "two_sizes", "large", "one_row", "video"])
def test_parity_with_hf(grid):
  model, params = hf_tower()
  rng = np.random.default_rng(len(grid) * 100 + int(np.prod(grid[0])))
  pixels = random_pixels(rng, grid)
  ref = hf_forward(model, pixels, grid)
  errs = _errors(jitted(params, jnp.asarray(pixels), jnp.asarray(grid, jnp.int32)), ref)
  print(f"grid {grid}: merged rel err {errs[0]:.2e}, deepstack {max(errs[1:]):.2e}")
  assert max(errs) <= TOL, errs


def test_frame_patches_path_equals_packed():
  _, params = hf_tower()
  grid = jnp.asarray([[2, 4, 6], [1, 6, 4]], jnp.int32)  # every frame 24 patches (as in the video case)
  pixels = jnp.asarray(random_pixels(np.random.default_rng(7), grid))
  packed = jitted(params, pixels, grid)
  per_frame = jitted(params, pixels, grid, frame_patches=24)
  errs = _errors(per_frame, (np.asarray(packed[0]), [np.asarray(d) for d in packed[1]]))
  assert max(errs) <= 1e-6, errs


def test_jit_with_traced_grid_equals_eager():
  _, params = hf_tower()
  grid = np.array([[1, 4, 4], [1, 6, 8]], np.int32)
  pixels = jnp.asarray(random_pixels(np.random.default_rng(8), grid))
  eager = TOWER.apply({"params": params}, pixels, jnp.asarray(grid))
  traced = jitted(params, pixels, jnp.asarray(grid))
  errs = _errors(traced, (np.asarray(eager[0]), [np.asarray(d) for d in eager[1]]))
  assert max(errs) <= 1e-6, errs


def test_layout_matches_hf_position_ids():
  """Rows / columns of the packed patches in merge-block order, as HF's helper lays them out."""
  from transformers.vision_utils import get_vision_position_ids
  grid = np.array([[2, 4, 6], [1, 2, 8]])
  ref = get_vision_position_ids(torch.as_tensor(grid), VISION.spatial_merge_size).numpy()
  lay = patch_layout(jnp.asarray(grid), int(np.prod(grid, axis=1).sum()), VISION.spatial_merge_size)
  np.testing.assert_array_equal(np.stack([lay["row"], lay["col"]], -1), ref)
  np.testing.assert_array_equal(lay["frame"], np.repeat([0, 1, 2], [24, 24, 16]))


def test_bad_grids_are_rejected():
  with pytest.raises(ValueError, match="patches but pixel_values"):
    check_grid(np.array([[1, 4, 4]]), 20, 2)
  with pytest.raises(ValueError, match="multiples of the spatial merge"):
    check_grid(np.array([[1, 3, 4]]), 12, 2)
  with pytest.raises(ValueError, match="frame_patches=16"):
    check_grid(np.array([[1, 4, 4], [1, 2, 8], [1, 4, 6]]), 56, 2, frame_patches=16)
