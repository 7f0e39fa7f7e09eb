"""Vision tower forward+backward: one packed, masked sequence of all patches (any image sizes)
vs per-image attention (`frame_patches`, same-size images), same weights and inputs, one run.

    python benchmarks/qwen2_5_vl_vision_batching.py                          # tiny, CPU
    python benchmarks/qwen2_5_vl_vision_batching.py --variant 3b --images 32 --size 224 --bf16   # GPU

Robot batches are many images of one resolution (VLA: 32 samples x 2 cameras); the packed mask
is quadratic in the whole batch, the per-image path linear.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--variant", default="tiny")
  ap.add_argument("--images", type=int, default=8)
  ap.add_argument("--size", type=int, default=224, help="image side in pixels (multiple of 28)")
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--bf16", action="store_true")
  args = ap.parse_args()

  from roboalign_jax.models import qwen2_5_vl
  from roboalign_jax.models.qwen2_5_vl.vision import VisionTower
  dtype = jnp.bfloat16 if args.bf16 else jnp.float32
  config = qwen2_5_vl.Qwen2_5_VLConfig.from_variant(args.variant, dtype=dtype)
  tower = VisionTower(config.vision, dtype, dtype)
  side = args.size // config.vision.patch_size
  grid = jnp.asarray([[1, side, side]] * args.images, jnp.int32)
  n = args.images * side * side
  pixels = jnp.asarray(np.random.default_rng(0).standard_normal((n, config.vision.patch_dim)), dtype)
  import flax.linen as nn
  params = nn.unbox(jax.jit(tower.init)(jax.random.key(0), pixels, grid))["params"]

  def timed(frame_patches):
    loss = lambda p: tower.apply({"params": p}, pixels, grid, frame_patches).astype(jnp.float32).var()
    step = jax.jit(jax.value_and_grad(loss))
    out = step(params)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(args.iters):
      out = step(params)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / args.iters, out

  packed_s, packed = timed(None)
  per_image_s, per_image = timed(side * side)
  err = float(jnp.max(jnp.abs(packed[0] - per_image[0])) / (jnp.abs(packed[0]) + 1e-12))
  print(f"{jax.devices()[0].device_kind}: vision {args.variant}, {args.images} images of {args.size}px "
        f"({n} patches), {'bf16' if args.bf16 else 'fp32'}: packed {packed_s * 1e3:.1f} ms, "
        f"per-image {per_image_s * 1e3:.1f} ms -> per-image is {packed_s / per_image_s:.2f}x faster "
        f"(loss rel diff {err:.1e})")


if __name__ == "__main__":
  main()
