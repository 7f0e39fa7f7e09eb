"""Stage 3 training steps/s on CPU with and without the feature cache, same tiny backbone, head,
fixture and batch size.

  online   every step reads the episode, decodes and resizes both cameras, runs the processor and the
           frozen backbone up to the feature layer, then the head's update;
  cached   every step reads the features from ArrayRecord (built once, timed separately) and runs
           the head's update.

The two run interleaved in blocks of `--block` steps (online, cached, online, ... for --rounds
blocks each), both with augmentation off (the cache needs it), after one untimed block each
(compilation). Each side's data iterator stays open and keeps reading ahead (up to
config.data.prefetch_buffer batches) while the other side runs, so a block may start with a few
batches ready. Prints the steps/s of each side at its median and at its fastest (min) block,
the ratio cached / online of the medians (> 1: the cache is faster), the one-off cache build time
and the load average.

    .venv/bin/python benchmarks/vla_step_cpu.py [--episodes 8 --rounds 5 --block 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from timing import interleaved, load_line

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--episodes", type=int, default=8)
  ap.add_argument("--rounds", "--blocks", dest="rounds", type=int, default=5,
                  help="interleaved timed blocks of each side (--blocks: its former name)")
  ap.add_argument("--block", type=int, default=10, help="training steps per block")
  args = ap.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax

  import tiny_qwen
  from configs_loader import load_config
  from roboalign_jax import data
  from roboalign_jax.data.pipeline import make_dataset
  from roboalign_jax.parallel import mesh as mesh_lib
  from roboalign_jax.parallel import sharding as sharding_lib
  from roboalign_jax.train import vla

  root = tempfile.mkdtemp(prefix="vla_bench_")
  fixture = data.write_fixture("libero", os.path.join(root, "rlds"), args.episodes, 0)
  config = load_config(f"configs/vla.py:tiny,backbone={tiny_qwen.checkpoint_dir(112 * 112)},data={fixture}")
  config.data.update(cache_dir=os.path.join(root, "cache"), progress=False, augment=False)
  mesh = mesh_lib.create_mesh(config.mesh.to_dict())
  data_config = config.data.copy_and_resolve_references()
  data_config.processor_dir = config.model.init_dir
  handles = data.open_datasets(data_config)
  setup = vla.build(config, mesh, 10 ** 6)
  setup.data, setup.handles = data_config, handles
  started = time.perf_counter()
  config.vla.cache_features = True
  reading = vla._cached_reading(config, data_config, handles, setup)
  build_seconds = time.perf_counter() - started
  sides = {"online": (iter(make_dataset(data_config, "train", handles=handles)), vla.model_batch),
           "cached": (iter(make_dataset(data_config, "train", handles=handles, **reading)), lambda b: b)}
  state = {name: jax.tree.map(lambda x: x.copy(), setup.state) for name in sides}
  print(f"tiny backbone (layer {setup.layer}), {config.head.variant} head, batch {config.data.global_batch_size}, "
        f"{sum(h.index.num_steps for h in handles)} fixture steps; {load_line()}")

  def run_block(name):
    it, convert = sides[name]
    for _ in range(args.block):
      state[name], metrics = setup.step(state[name], sharding_lib.global_batch(convert(next(it)), mesh))
    jax.block_until_ready(metrics)

  # The first, untimed call of each side compiles and warms its pipeline.
  times = interleaved({name: lambda name=name: run_block(name) for name in sides}, args.rounds)
  for name, t in times.items():
    print(f"{name:7s} median {args.block / t['median']:6.2f} steps/s   fastest block (min time) "
          f"{args.block / t['min']:6.2f} steps/s")
  ratio = times["online"]["median"] / times["cached"]["median"]
  print(f"cached / online (medians) = {ratio:.2f}x; cache build {build_seconds:.1f} s (once per backbone, data "
        f"and transforms); {load_line()}")


if __name__ == "__main__":
  main()
