"""Benchmark names of the command line -> loaders `load(path, judge=None) -> Benchmark`."""

from __future__ import annotations

from typing import Callable

from roboalign_jax.eval.mllm import blink, llava_jsonl, mmstar, robospatial, where2place
from roboalign_jax.eval.mllm.examples import Benchmark

LOADERS: dict[str, Callable[..., Benchmark]] = {
    mmstar.NAME: mmstar.load,
    blink.NAME: blink.load,
    where2place.NAME: where2place.load,
    robospatial.NAME: robospatial.load,
    llava_jsonl.NAME: llava_jsonl.load,
    llava_jsonl.JUDGED_NAME: llava_jsonl.load_judged,
}
# The column order of the paper's Table 8.
TABLE_ORDER = ("mmstar", "robospatial", "where2place", "blink_depth", "robot_r1", "jsonl")


def load(name: str, path: str, judge=None) -> Benchmark:
  if name not in LOADERS:
    raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(LOADERS)}")
  benchmark = LOADERS[name](path, judge=judge)
  seen: set[str] = set()
  for example in benchmark.examples:
    if example.id in seen:  # answers are cached by id: two questions must not share one
      raise ValueError(f"benchmark {name!r}, {path}: example id {example.id!r} repeats; expected unique ids")
    seen.add(example.id)
  return benchmark


def parse_specs(spec: str) -> list[tuple[str, str]]:
  """"mmstar:PATH,blink_depth:PATH" -> [(name, path), ...] (names checked, order kept)."""
  pairs = []
  for item in filter(None, (s.strip() for s in spec.split(","))):
    name, sep, path = item.partition(":")
    if not sep or not path:
      raise ValueError(f"benchmark spec {item!r}; expected NAME:PATH with NAME in {sorted(LOADERS)}")
    if name not in LOADERS:
      raise ValueError(f"unknown benchmark {name!r} in {item!r}; expected one of {sorted(LOADERS)}")
    pairs.append((name, path))
  if not pairs:
    raise ValueError(f"no benchmarks in {spec!r}; expected NAME:PATH[,NAME:PATH...]")
  return pairs
