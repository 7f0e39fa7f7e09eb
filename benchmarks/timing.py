"""Shared timing rules of the side-by-side benchmarks.

`mean_seconds`: one untimed call (compilation, warm-up), then the mean wall time of `iters` calls.
`interleaved`: both sides warmed up, then timed alternately (A B A B ...) so that load from other
work on a shared machine hits both alike; medians and minimums per side, and the load average
before and after (a warning when it exceeds the core count: ratios taken then are not publishable).
`fn` must block until its result is ready.
"""

import os
import statistics
import time


def mean_seconds(fn, iters: int) -> float:
  fn()
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - start) / iters


def load_line() -> str:
  """The 1-minute load average against the core count, with a warning when it is above."""
  load, cores = os.getloadavg()[0], os.cpu_count() or 1
  warning = "  WARNING: machine busy, ratios unreliable" if load > cores else ""
  return f"load average {load:.2f} on {cores} cores{warning}"


def interleaved(sides: dict, rounds: int, *, self_timed: bool = False, warmup: bool = True
                ) -> dict[str, dict[str, float]]:
  """{name: fn} -> {name: {"median": s, "min": s}} over `rounds` alternating calls of each side.

  `self_timed`: each fn returns the seconds it measured itself (its set-up left out) instead of
  being timed whole. `warmup=False` skips the untimed first call of each side.
  """
  if warmup:
    for fn in sides.values():
      fn()
  times = {name: [] for name in sides}
  for _ in range(rounds):
    for name, fn in sides.items():
      start = time.perf_counter()
      measured = fn()
      times[name].append(measured if self_timed else time.perf_counter() - start)
  return {name: {"median": statistics.median(t), "min": min(t)} for name, t in times.items()}


def xla_profile(jitted, args: tuple, calls: int = 5) -> list[tuple[str, float]]:
  """Where a jitted function's time goes on XLA's CPU backend: [(part, ms per call)], largest first.

  Runs `jitted(*args)` `calls` times under `jax.profiler.trace` and adds up the executed ops'
  durations over all threads (so the sum can exceed wall time), each op attributed to a part of
  the model by the source path XLA kept in its metadata: vision or text; attention scores (the
  [.., T, S] logits, mask, softmax and the two matmuls around them), rotary, q/k/v/o projections,
  MLP, norms, merger, head + loss; "other" (embeddings, optimizer, loop bookkeeping, ...).
  """
  import collections
  import glob
  import re
  import tempfile

  import jax
  hlo = jitted.lower(*args).compile().as_text()
  source = dict(re.findall(r"%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", hlo))
  jax.block_until_ready(jitted(*args))
  directory = tempfile.mkdtemp(prefix="xla_profile_")
  with jax.profiler.trace(directory):
    for _ in range(calls):
      jax.block_until_ready(jitted(*args))
  path = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)[0]
  parts = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):  # the CPU backend's worker threads
        continue
      for event in line.events:
        if event.name in source:
          parts[_model_part(source[event.name])] += event.duration_ns / 1e6 / calls
  return parts.most_common()


def print_profile(parts: list[tuple[str, float]], what: str) -> None:
  """Prints `xla_profile`'s parts with their share of the total; `what` names one call."""
  total = sum(ms for _, ms in parts)
  print(f"ours by model part (op time summed over threads, {total:.1f} ms per {what}):")
  for part, ms in parts:
    print(f"  {part:32s} {ms:7.1f} ms  {100 * ms / total:5.1f}%")


def _model_part(op_name: str) -> str:
  """'text attention scores', 'vision MLP', ... from an op's source path (the model names its
  attention core `scores` and its rotary `rotary` with jax.named_scope)."""
  tower = "vision" if "/visual/" in op_name else "text" if "language_model" in op_name else ""
  for needle, part in (("/scores/", "attention scores"), ("/rotary/", "rotary"), ("_proj/", "q/k/v/o projections"),
                       ("/qkv/", "q/k/v/o projections"), ("/attn/proj/", "q/k/v/o projections"), ("/mlp", "MLP"),
                       ("norm", "norms"), ("lm_head", "head + loss"), ("logits", "head + loss"),
                       ("log_softmax", "head + loss"), ("merger", "merger")):
    if needle in op_name:
      return f"{tower} {part}".strip()
  return f"{tower} other".strip()
