"""The CALVIN ABC->D protocol around an environment: scene of a symbolic initial state, one chain
rolled out subtask by subtask, and the score (fraction of chains with >= i successes in a row,
average length).

Per chain: the env is reset once to the chain's initial state; each subtask gets up to 360 steps
with the task oracle asked after every step; the chain stops at its first failed subtask, so its
length is the number of subtasks done in a row (0..5). The policy is reset before each subtask.

`calvin_env` (and the oracle built from calvin_models' task config) cannot be installed here; the
binding below uses only the calls the benchmark's own evaluation makes (`reset(robot_obs=,
scene_obs=)`, `get_obs()`, `get_info()`, `step(action)`, `oracle.get_task_info_for_set(start,
now, {subtask})`), and is exercised in the tests with a scripted environment of that interface.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from roboalign_jax.eval import jsonl_log
from roboalign_jax.eval.calvin.sequences import SEQUENCE_LENGTH, State, evaluation_sequences
from roboalign_jax.eval.closed_loop import ActionChunks

STEPS_PER_SUBTASK = 360
# The robot's start pose for every chain (robot_obs: tcp pos 3, tcp euler 3, gripper width 1,
# arm joints 7, gripper action 1), as the benchmark sets it.
ROBOT_START = np.array([0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963,
                        -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0])
BLOCK_ON_SLIDER = {"slider_left": np.array([-2.40851662e-01, 9.24044687e-02, 4.60990009e-01]),
                   "slider_right": np.array([7.03416330e-02, 9.24044687e-02, 4.60990009e-01])}
BLOCK_ON_TABLE = (np.array([5.00000896e-02, -1.20000177e-01, 4.59990009e-01]),
                  np.array([2.29995412e-01, -1.19995140e-01, 4.59990010e-01]))
BLOCK_YAW_RANGE = (np.pi / 2 - np.pi / 8, np.pi / 2 + np.pi / 8)


def fnv1_32(data: bytes, value: int = 0) -> int:
  """32-bit FNV-1 from `value` (pyhash's fnv1_32 starts at seed 0, not FNV's offset basis)."""
  for byte in data:
    value = (value * 16777619) & 0xFFFFFFFF
    value ^= byte
  return value


def scene_seed(initial_state: Mapping[str, Any]) -> int:
  """The benchmark's per-state seed: pyhash.fnv1_32()(str(state.values())); pyhash hashes a Python 3
  str as its UTF-16-LE code units."""
  return fnv1_32(str(initial_state.values()).encode("utf-16-le"))


def initial_scene(initial_state: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """(robot_obs [15], scene_obs [24]) that put the env into `initial_state` (slider, drawer, lights,
  blocks; table blocks take the two table spots in a per-state seeded order, with seeded yaw)."""
  rng = np.random.RandomState(scene_seed(initial_state))
  table = list(BLOCK_ON_TABLE)
  rng.shuffle(table)
  scene = np.zeros(24)
  scene[0] = 0.28 if initial_state["slider"] == "left" else 0.0
  scene[1] = 0.22 if initial_state["drawer"] == "open" else 0.0
  scene[3] = 0.088 if initial_state["lightbulb"] == 1 else 0.0
  scene[4], scene[5] = initial_state["lightbulb"], initial_state["led"]
  red, blue, pink = (initial_state[b] for b in ("red_block", "blue_block", "pink_block"))
  # Red takes the first table spot; blue the second if red is on the table; pink always the second.
  spots = {"red": table[0], "blue": table[1] if red == "table" else table[0], "pink": table[1]}
  for offset, (colour, where) in zip((6, 12, 18), (("red", red), ("blue", blue), ("pink", pink))):
    scene[offset:offset + 3] = BLOCK_ON_SLIDER.get(where, spots[colour])
    scene[offset + 5] = rng.uniform(*BLOCK_YAW_RANGE)
  return ROBOT_START.copy(), scene


def success_rates(lengths: Sequence[int]) -> dict[str, float]:
  """{"1": fraction of chains with >= 1 subtask done, ..., "5": ..., "avg_len": mean length}."""
  lengths = np.asarray(lengths, np.int64)
  if lengths.size == 0:
    raise ValueError("no chain results to score")
  if lengths.min() < 0 or lengths.max() > SEQUENCE_LENGTH:
    raise ValueError(f"chain lengths must be in 0..{SEQUENCE_LENGTH}; got {sorted(set(lengths.tolist()))}")
  rates = {str(i): float(np.mean(lengths >= i)) for i in range(1, SEQUENCE_LENGTH + 1)}
  rates["avg_len"] = float(lengths.mean())
  return rates


class Env(Protocol):
  def reset(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> Any: ...
  def get_obs(self) -> Any: ...
  def get_info(self) -> Any: ...
  def step(self, action: np.ndarray) -> tuple[Any, float, bool, Any]: ...


class ChainPolicy(Protocol):
  def reset(self) -> None: ...
  def step(self, observation: Any, instruction: str) -> np.ndarray: ...


def run_chain(env: Env, policy: ChainPolicy, oracle: Any, initial_state: State, sequence: Sequence[str],
              instructions: Mapping[str, str], steps_per_subtask: int = STEPS_PER_SUBTASK) -> int:
  """Rolls out one chain; returns how many subtasks were done in a row."""
  env.reset(*initial_scene(initial_state))
  done = 0
  for subtask in sequence:
    observation, start = env.get_obs(), env.get_info()
    policy.reset()
    for _ in range(steps_per_subtask):
      observation, _, _, info = env.step(policy.step(observation, instructions[subtask]))
      if oracle.get_task_info_for_set(start, info, {subtask}):
        break
    else:
      return done
    done += 1
  return done


def evaluate(env: Env, policy: ChainPolicy, oracle: Any, instructions: Mapping[str, str], results_path: str, *,
             num_sequences: int = 1000, progress: Callable[[Iterable], Iterable] = iter) -> dict[str, float]:
  """All chains, appending {"chain", "initial_state", "sequence", "length"} per chain to the JSONL
  `results_path` (an interrupted run resumes with the chains not written yet); returns the score."""
  chains = evaluation_sequences(num_sequences)
  log = jsonl_log.ResumableLog(results_path, ("chain",))
  for index in progress([i for i in range(len(chains)) if not log.done((i,))]):
    state, sequence = chains[index]
    length = run_chain(env, policy, oracle, state, sequence, instructions)
    log.append({"chain": index, "initial_state": state, "sequence": list(sequence), "length": length})
  lengths = [log.get((i,))["length"] for i in range(len(chains)) if log.done((i,))]
  return success_rates(lengths)


class ServedChainPolicy:
  """A chunked policy (e.g. an openpi client's `infer`) as the per-step policy a chain needs: the
  CALVIN observation becomes the request of the `calvin` layout (static camera, gripper camera,
  robot_obs [15], instruction) and the first `replan` actions of each chunk are executed."""

  def __init__(self, infer: Callable[[dict], Mapping[str, Any]], replan: int = 5):
    self.chunks = ActionChunks(infer, replan)

  def reset(self) -> None:
    self.chunks.reset()

  def step(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
    def request() -> dict:
      return {"observation/image": np.asarray(observation["rgb_obs"]["rgb_static"], np.uint8),
              "observation/wrist_image": np.asarray(observation["rgb_obs"]["rgb_gripper"], np.uint8),
              "observation/state": np.asarray(observation["robot_obs"], np.float32), "prompt": instruction}
    return np.asarray(self.chunks.act(request), np.float64)
