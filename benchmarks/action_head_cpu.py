"""GR00T N1.5 action head on CPU: ours (`action_head.sample`, jitted, compiled once) vs the public
torch head (lerobot's FlowmatchingActionHead.get_action, eval mode, no_grad), same config, same
weights, same inputs.

One call = the whole inference of a chunk: VL self-attention over T tokens, state encoder, then
`num_inference_timesteps` Euler steps of the DiT (4 for N1.5). The two sides run interleaved
(ours, torch, ours, torch, ... for --rounds rounds, after one untimed call of each) so load
changes hit both alike; prints the median and min latency of each side, the ratio torch / ours
of the medians and of the mins (> 1: ours is faster), ours' first call (compilation) and the
load average before and after.

    .venv/bin/python benchmarks/action_head_cpu.py [--variant gr00t_n1_5 --vl_tokens 300 --batches 1,8
                                                    --rounds 10 --threads N]

`--threads` (default: all cores) pins the process to that many cores, which bounds both XLA's and
torch's thread pools the same way, and sets torch's thread count to it. The released shapes need
about 9 GB of memory (two fp32 copies of the 1.07B-parameter head).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from timing import interleaved, load_line

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--variant", default="gr00t_n1_5")
  ap.add_argument("--vl_tokens", type=int, default=300)
  ap.add_argument("--batches", default="1,8")
  ap.add_argument("--rounds", "--iters", dest="rounds", type=int, default=10,
                  help="interleaved timed calls of each side (--iters: its former name)")
  ap.add_argument("--threads", type=int, default=os.cpu_count())
  args = ap.parse_args()

  cores = min(args.threads, os.cpu_count())
  if cores < os.cpu_count():
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])  # before either runtime starts threads
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import torch
  torch.set_num_threads(cores)

  import gr00t_reference as ref_lib
  from roboalign_jax.models import action_head

  config = action_head.config_from_variant(args.variant)
  print(f"variant {args.variant}: {action_head.num_params(config):,} parameters, {config.num_inference_timesteps} "
        f"Euler steps, {args.vl_tokens} VL tokens, {cores} threads per side, {jax.devices()[0].platform}")
  print(load_line())
  torch.manual_seed(0)
  ref = ref_lib.build_reference(config.to_gr00t_dict()).eval()
  tensors = {f"action_head.{k}": v.detach().numpy() for k, v in ref.state_dict().items()}
  params = action_head.checkpoint_io.params_from_gr00t_tensors(tensors, config)
  del tensors
  head = action_head.FlowMatchingHead(config)

  for b in (int(x) for x in args.batches.split(",")):
    rng = np.random.default_rng(b)
    vl = rng.normal(size=(b, args.vl_tokens, config.feature_dim)).astype(np.float32)
    state = rng.normal(size=(b, 1, config.max_state_dim)).astype(np.float32)
    ids = rng.integers(0, config.max_num_embodiments, size=b)
    noise = ref_lib.reference_noise(0, (b, config.action_horizon, config.action_dim))
    vl_j, state_j, ids_j, noise_j = map(jax.numpy.asarray, (vl, state, ids, noise))

    def ours():
      return jax.block_until_ready(action_head.sample(head, params, vl_j, state_j, ids_j, noise=noise_j))

    def theirs():
      return ref_lib.reference_get_action(ref, vl, state, ids, seed=0)

    t0 = time.perf_counter()
    first = ours()  # compiles
    compile_s = time.perf_counter() - t0
    err = ref_lib.max_rel_err(np.asarray(first) - noise, theirs() - noise)
    times = interleaved({"ours": ours, "torch": theirs}, args.rounds)
    med = {k: v["median"] for k, v in times.items()}
    low = {k: v["min"] for k, v in times.items()}
    print(f"batch {b}: ours median {med['ours'] * 1e3:8.1f} ms  min {low['ours'] * 1e3:8.1f} ms | torch median "
          f"{med['torch'] * 1e3:8.1f} ms  min {low['torch'] * 1e3:8.1f} ms | torch/ours median "
          f"{med['torch'] / med['ours']:.2f}x  min {low['torch'] / low['ours']:.2f}x | first call (compile) "
          f"{compile_s:.1f} s, max rel. error vs torch {err:.1e}")
  print(load_line())


if __name__ == "__main__":
  main()
