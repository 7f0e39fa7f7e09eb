"""CALVIN's long-horizon evaluation chains: 1000 seeded sequences of 5 subtasks (ABC->D protocol).

The benchmark (calvin_agent/evaluation/multistep_sequences.py) describes the scene by a symbolic
state (switches, slider, drawer, where each block is, whether the gripper holds one) and each of
its 34 subtasks by the states it may start from and what it changes. A chain starts from one of
the valid initial states and has 5 subtasks of pairwise different categories, each applicable in
exactly one way to the state the previous ones left. `evaluation_sequences(1000)` reproduces the
benchmark's list, in its order: per initial state k, legacy NumPy RNG seeded k drawing 5 distinct
subtasks by rejection; then the whole list shuffled with seed 0. Every paper reports on this list,
so the generator consumes random numbers exactly as the benchmark's does.

Pure Python + NumPy: runs in the simulator's environment and in ours.
"""

from __future__ import annotations

import functools
import itertools
from typing import Mapping, Sequence

import numpy as np

State = Mapping[str, object]
BLOCKS = ("red_block", "blue_block", "pink_block")
SLIDER_SIDES = ("slider_right", "slider_left")
SEQUENCE_LENGTH = 5
# The symbolic state's variables and values, in the benchmark's order (it matters: the order of
# the initial states and the per-state seeds follow it).
CONDITIONS = {
    "led": (0, 1),
    "lightbulb": (0, 1),
    "slider": ("right", "left"),
    "drawer": ("closed", "open"),
    "red_block": ("table", "slider_right", "slider_left"),
    "blue_block": ("table", "slider_right", "slider_left"),
    "pink_block": ("table", "slider_right", "slider_left"),
    "grasped": (0,),
}


def _color(block: str) -> str:
  return block.split("_")[0]


def _build_tasks() -> dict[str, tuple[int, list[tuple[dict, dict]]]]:
  """name -> (category, [(condition, effect), ...]) in the benchmark's order (the rejection sampler
  draws names by index, so the order is part of the protocol). A condition value that is a tuple
  means "any of these"."""
  free = {"grasped": 0}
  tasks: dict[str, tuple[int, list[tuple[dict, dict]]]] = {}
  for verb in ("rotate", "push"):
    for block in BLOCKS:
      for side in ("right", "left"):
        tasks[f"{verb}_{_color(block)}_block_{side}"] = (1, [({block: "table", **free}, {block: "table"})])
  tasks["move_slider_left"] = (2, [({"slider": "right", **free}, {"slider": "left"})])
  tasks["move_slider_right"] = (2, [({"slider": "left", **free}, {"slider": "right"})])
  tasks["open_drawer"] = (3, [({"drawer": "closed", **free}, {"drawer": "open"})])
  tasks["close_drawer"] = (3, [({"drawer": "open", **free}, {"drawer": "closed"})])
  for block in BLOCKS:
    lift = {block: "grasped", "grasped": 1}
    name = f"lift_{_color(block)}_block"
    tasks[f"{name}_table"] = (4, [({block: "table", **free}, lift)])
    # A block on the slider's shelf can be lifted only when the slider uncovers it.
    tasks[f"{name}_slider"] = (5, [({block: "slider_left", "slider": "right", **free}, lift),
                                   ({block: "slider_right", "slider": "left", **free}, lift)])
    tasks[f"{name}_drawer"] = (6, [({block: "drawer", "drawer": "open", **free}, lift)])
  tasks["place_in_slider"] = (7, [({block: "grasped", "slider": side, "grasped": 1},
                                   {block: f"slider_{side}", "grasped": 0})
                                  for block in BLOCKS for side in ("right", "left")])
  tasks["place_in_drawer"] = (7, [({block: "grasped", "drawer": "open", "grasped": 1}, {block: "drawer", "grasped": 0})
                                  for block in BLOCKS])
  pairs = [(top, bottom) for top in BLOCKS for bottom in BLOCKS if top != bottom]
  tasks["stack_block"] = (10, [({top: "grasped", bottom: "table", "grasped": 1},
                                {top: "stacked_top", bottom: "stacked_bottom", "grasped": 0}) for top, bottom in pairs])
  tasks["unstack_block"] = (11, [({top: "stacked_top", bottom: "stacked_bottom", **free},
                                  {top: "table", bottom: "table"}) for top, bottom in pairs])
  tasks["turn_on_lightbulb"] = (8, [({"lightbulb": 0, **free}, {"lightbulb": 1})])
  tasks["turn_off_lightbulb"] = (8, [({"lightbulb": 1, **free}, {"lightbulb": 0})])
  tasks["turn_on_led"] = (8, [({"led": 0, **free}, {"led": 1})])
  tasks["turn_off_led"] = (8, [({"led": 1, **free}, {"led": 0})])
  # Pushing a block off the table into the open drawer: the other two must be on the slider.
  tasks["push_into_drawer"] = (9, [({block: "table", **{other: SLIDER_SIDES for other in BLOCKS if other != block},
                                     "drawer": "open", **free}, {block: "drawer", "grasped": 0})
                                   for block in BLOCKS])
  return tasks


TASKS = _build_tasks()
TASK_NAMES = tuple(TASKS)


def _holds(state: State, condition: Mapping[str, object]) -> bool:
  return all(state[k] in v if isinstance(v, tuple) else state[k] == v for k, v in condition.items())


def next_states(state: State, task: str) -> list[dict]:
  """The states `task` can lead to from `state` (one per applicable variant)."""
  if task not in TASKS:
    raise KeyError(f"unknown CALVIN subtask {task!r}; expected one of {sorted(TASKS)}")
  return [{**state, **effect} for condition, effect in TASKS[task][1] if _holds(state, condition)]


def is_valid_sequence(state: State, sequence: Sequence[str]) -> bool:
  """Each subtask applies in exactly one way to the state the previous ones left, and the
  subtasks' categories are pairwise different."""
  for task in sequence:
    states = next_states(state, task)
    if len(states) != 1:
      return False
    state = states[0]
  categories = [TASKS[task][0] for task in sequence]
  return len(set(categories)) == len(categories)


def initial_states() -> list[dict]:
  """The valid initial states, in the benchmark's order: one or two blocks on the table and at most
  one on each side of the slider."""
  states = []
  for values in itertools.product(*CONDITIONS.values()):
    if values.count("table") in (1, 2) and values.count("slider_right") < 2 and values.count("slider_left") < 2:
      states.append(dict(zip(CONDITIONS, values)))
  return states


def _sequences_for_state(state: State, count: int, seed: int) -> list[tuple[str, ...]]:
  # The benchmark seeds the legacy global RNG with the state's index and draws 5 distinct names
  # with np.random.choice(names, 5, replace=False), i.e. permutation(34)[:5], until `count` are valid.
  rng = np.random.RandomState(seed)
  categories = np.array([TASKS[name][0] for name in TASK_NAMES])
  found = []
  while len(found) < count:
    picks = rng.permutation(len(TASK_NAMES))[:SEQUENCE_LENGTH]
    if len(set(categories[picks].tolist())) < SEQUENCE_LENGTH:  # the cheap half of the test first
      continue
    sequence = tuple(TASK_NAMES[i] for i in picks)
    if is_valid_sequence(state, sequence):
      found.append(sequence)
  return found


@functools.lru_cache(maxsize=4)
def evaluation_sequences(num_sequences: int = 1000) -> tuple[tuple[dict, tuple[str, ...]], ...]:
  """The benchmark's (initial state, 5 subtasks) chains, in its order (1000 for the ABC->D score)."""
  if num_sequences < 1:
    raise ValueError(f"num_sequences={num_sequences}; expected at least 1")
  states = initial_states()
  counts = [len(part) for part in np.array_split(range(num_sequences), len(states))]
  chains = []
  for index, (state, count) in enumerate(zip(states, counts)):
    chains.extend((state, sequence) for sequence in _sequences_for_state(state, count, index))
  np.random.RandomState(0).shuffle(chains)
  return tuple(chains)
