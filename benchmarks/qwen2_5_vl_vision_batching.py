"""Vision tower forward+backward: one packed, masked sequence of all patches (any image sizes)
vs per-image attention (`frame_patches`, same-size images), same weights and inputs, one run.

    python benchmarks/qwen2_5_vl_vision_batching.py                          # tiny, CPU
    python benchmarks/qwen2_5_vl_vision_batching.py --variant 3b --images 32 --size 224 --bf16   # GPU

Robot batches are many images of one resolution (VLA: 32 samples x 2 cameras); the packed mask
is quadratic in the whole batch, the per-image path linear.

One call is a jitted forward+backward of the tower (compiled before timing). The two paths run
interleaved (packed, per-image, packed, ... for --rounds rounds, after one untimed call of each)
so that load from other work hits both alike. Prints each path's median and minimum time, the
ratio packed / per-image of the medians (> 1: per-image is faster), the relative difference of
the two losses and the load average (of the host's CPUs, whatever device runs the tower).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from timing import interleaved, load_line


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--variant", default="tiny")
  ap.add_argument("--images", type=int, default=8)
  ap.add_argument("--size", type=int, default=224, help="image side in pixels (multiple of 28)")
  ap.add_argument("--rounds", "--iters", dest="rounds", type=int, default=5,
                  help="interleaved timed calls of each path (--iters: its former name)")
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

  def step_fn(frame_patches):
    loss = lambda p: tower.apply({"params": p}, pixels, grid, frame_patches).astype(jnp.float32).var()
    step = jax.jit(jax.value_and_grad(loss))
    return lambda: jax.block_until_ready(step(params))

  steps = {"packed": step_fn(None), "per-image": step_fn(side * side)}
  packed, per_image = steps["packed"](), steps["per-image"]()  # compiles; the outputs are compared below
  times = interleaved(steps, args.rounds)
  err = float(jnp.max(jnp.abs(packed[0] - per_image[0])) / (jnp.abs(packed[0]) + 1e-12))
  print(f"{jax.devices()[0].device_kind}: vision {args.variant}, {args.images} images of {args.size}px "
        f"({n} patches), {'bf16' if args.bf16 else 'fp32'}, {args.rounds} interleaved rounds, {load_line()}")
  for name, t in times.items():
    print(f"{name:9s} median {t['median'] * 1e3:9.1f} ms   min {t['min'] * 1e3:9.1f} ms")
  print(f"packed / per-image (medians) {times['packed']['median'] / times['per-image']['median']:.2f}x "
        f"(> 1: per-image is faster); loss rel diff {err:.1e}")


if __name__ == "__main__":
  main()
