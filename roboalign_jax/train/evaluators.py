"""Evaluators declared in the config and run by the shared loop, big_vision style.

    config.evals.heldout = dict(type="sft_heldout", every=500, datasets=[...], num_batches=4, ...)

Each entry names a registered evaluator `type`, how often it runs (`every` steps; 0 = only after
the last step), whether it also runs once before the first step (`before_train`, logged at step
0 of a run that starts from scratch; EasyR1's `val_before_train`) and its own options. The loop
writes what an evaluator returns (scalars, keys like `eval/loss`) to metrics.jsonl and
TensorBoard at that step. A type is an import path to a factory
`make(options, setup) -> callable(state, step) -> {name: scalar}`; `setup` is the stage's own
setup record (model, mesh, data, ...), whose fields the factory reads.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

import ml_collections

# Evaluator type -> "module:factory". Factories import what they need, so listing one costs nothing.
EVALUATORS: dict[str, str] = {
    "debug_heldout": "roboalign_jax.train.debug:make_heldout_evaluator",
    "sft_heldout": "roboalign_jax.train.sft_eval:make_evaluator",
    "vla_action_mse": "roboalign_jax.train.vla:make_heldout_evaluator",
    # The representation probe of the model being trained (any stage whose setup has `.backbone`).
    "knn_probe": "roboalign_jax.eval.knn_probe:make_evaluator",
    # GRPO validation on held-out prompts (EasyR1's val_freq / val_before_train).
    "grpo_validation": "roboalign_jax.train.grpo_eval:make_evaluator",
}


@dataclasses.dataclass
class Evaluator:
  """A named evaluation run every `every` steps (0: only after the last step) and at the end,
  and at step 0 before training when `before_train` (runs that resume skip it)."""
  name: str
  every: int
  fn: Callable[[Any, int], Mapping[str, float]]
  before_train: bool = False

  def due(self, step: int, num_steps: int) -> bool:
    return bool(self.every and step % self.every == 0) or step == num_steps

  def __call__(self, state: Any, step: int) -> Mapping[str, float]:
    return self.fn(state, step)


def factory(type_name: str) -> Callable:
  if type_name not in EVALUATORS:
    raise ValueError(f"unknown evaluator type {type_name!r}; registered: {sorted(EVALUATORS)}")
  module, function = EVALUATORS[type_name].split(":")
  return getattr(importlib.import_module(module), function)


def build(config: ml_collections.ConfigDict, setup: Any) -> list[Evaluator]:
  """The evaluators of `config.evals` (absent or empty: none), in the config's order."""
  evaluators = []
  for name, options in (config.get("evals") or {}).items():
    if "type" not in options:
      raise ValueError(f"config.evals.{name} has no 'type'; registered types: {sorted(EVALUATORS)}")
    every = int(options.get("every", 0))
    if every < 0:
      raise ValueError(f"config.evals.{name}.every={every}; expected >= 0 (0 = only after the last step)")
    fn = factory(options.type)(options, setup)
    if fn is not None:  # a factory may decline (e.g. no held-out data configured)
      evaluators.append(Evaluator(name, every, fn, bool(options.get("before_train", False))))
  return evaluators
