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


def interleaved(sides: dict, rounds: int) -> dict[str, dict[str, float]]:
  """{name: fn} -> {name: {"median": s, "min": s}} over `rounds` alternating calls of each side."""
  for fn in sides.values():
    fn()
  times = {name: [] for name in sides}
  for _ in range(rounds):
    for name, fn in sides.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: {"median": statistics.median(t), "min": min(t)} for name, t in times.items()}
