"""Shared timing rule of the side-by-side benchmarks: one untimed call (compilation, warm-up),
then the mean wall time of `iters` calls. `fn` must block until its result is ready."""

import time


def mean_seconds(fn, iters: int) -> float:
  fn()
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - start) / iters
