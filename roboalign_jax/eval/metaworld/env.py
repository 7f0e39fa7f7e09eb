"""A Meta-World v3 task on the real simulator (metaworld 3.1.1 on MuJoCo 3.3).

Runs in the simulator environment (`make sim-metaworld`); imports numpy, Meta-World and MuJoCo
(the last two lazily, so the main environment can import this module's pure functions).

    env = MetaWorldEnv("drawer-open-v3", resolution=128)
    obs = env.reset(seed=3)                  # trial 3's fixed variant of the task
    obs, reward, success, info = env.step(np.array([0, 0, 0, -1.0]))
    image, wrist = env.images()              # corner camera (rotated upright) and gripperPOV
    state = env.state(obs)                   # [4]: hand xyz, gripper opening

Observation: Meta-World's 39-D vector (hand xyz, gripper opening, two objects' position and
quaternion, the same 18 values of the previous step, goal position). The goal is observable
(Meta-World's "MT" setting): the scripted experts read it. A policy gets only the proprio part
`obs[:4]` as its state and must see the task's objects and targets in the image.

Actions are Meta-World's 4-D: xyz mocap delta in [-1, 1] (x 1/100 m per unit) and the gripper
effort. `step` clips xyz to [-1, 1] and SNAPS the gripper to +1 (close, effort > 0) or -1 (open,
effort <= 0) before executing it, so a recorded action equals the executed one. (The scripted
experts emit -1, 0, 0.1, 0.6, 0.8 or 1; 0 means "not grasping", hence open.) A policy's 7-D
action in the common layout maps back with `from_common` (dims 0, 1, 2 and 6).

Variants: Meta-World draws a task's object / goal placement (its "rand_vec") from the global
NumPy random state at an unfrozen reset (re-drawing where a task rejects a placement, e.g. goal
too close to the object). Trial `seed` gets a fixed one, the same in every process and run:
`reset(seed)` seeds the global state with `seed`, resets once unfrozen, restores the global state
and freezes the vector -- exactly what Meta-World's own
`ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-goal-observable"](seed=seed)` does at
construction, so trial k is that env's variant (`env.variant` holds the vector).

Cameras: `corner` (third person) and `gripperPOV` (wrist), rendered with mujoco.Renderer. The
`corner` camera's up axis points down (xyaxes "-1 1 0 -0.2 -0.2 -1" in Meta-World's
xyz_base.xml), so its frames are upside down; they are rotated by 180 degrees (a roll of the
camera: not a mirror, which a vertical flip alone would be). Frames are rendered on demand
(`images()`), not at every step. Rendering: `fast_render=True` (default) turns off MuJoCo's
offscreen multisampling, shadows and reflections, which cost most of the frame time on a CPU
renderer; `fast_render=False` keeps MuJoCo's defaults.

Success is the env's `info["success"]` after each step; a trial ends at the first success.
"""

from __future__ import annotations

import os
import time
import warnings

# Headless rendering through EGL (Mesa); must be set before MuJoCo is imported.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402

CAMERAS = ("corner", "gripperPOV")
STATE_DIM = 4  # hand xyz, gripper opening: obs[:4]
OBS_DIM = 39
NOOP_ACTION = np.array([0.0, 0.0, 0.0, -1.0])
# The common 7-D layout's dims that hold Meta-World's xyz and gripper.
COMMON_DIMS = (0, 1, 2, 6)

# A short natural instruction per task (Meta-World ships none).
INSTRUCTIONS = {
    "assembly-v3": "put the ring onto the peg",
    "basketball-v3": "pick up the ball and dunk it into the basket",
    "bin-picking-v3": "move the cube from the left bin into the right bin",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button from the front behind the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "pick the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock down",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "hand-insert-v3": "move the hand into the hole",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-open-v3": "turn the faucet handle to open it",
    "faucet-close-v3": "turn the faucet handle to close it",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it behind the wall",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal",
    "plate-slide-back-side-v3": "slide the plate back sideways out of the goal",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grasp the stick and push the box with it",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck back to the goal",
    "reach-v3": "reach to the goal position",
    "reach-wall-v3": "reach over the wall to the goal position",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}
TASKS = tuple(INSTRUCTIONS)

# Closed-loop step budgets: twice the scripted expert's longest successful episode over trials 0-9
# (measured here, gripper snapped; pick-out-of-hole and basketball: unsnapped), rounded up to 50,
# at most Meta-World's own limit (max_path_length, 500); DEFAULT_MAX_STEPS for the tasks not measured.
MAX_STEPS = {
    "button-press-topdown-v3": 150, "drawer-close-v3": 200, "drawer-open-v3": 200, "door-open-v3": 250,
    "window-open-v3": 200, "reach-v3": 150, "push-v3": 150, "pick-place-v3": 150, "pick-out-of-hole-v3": 250,
    "disassemble-v3": 250, "bin-picking-v3": 500, "basketball-v3": 250,
}
DEFAULT_MAX_STEPS = 300
MAX_PATH_LENGTH = 500


def max_steps(task: str) -> int:
  return MAX_STEPS.get(task, DEFAULT_MAX_STEPS)


def parse_tasks(text: str) -> list[str]:
  """"all" | "a-v3,b-v3" -> task names (in the given order, without repeats), each known."""
  names = list(TASKS) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
  unknown = [t for t in names if t not in INSTRUCTIONS]
  if unknown or not names:
    raise ValueError(f"tasks {text!r}: unknown {unknown}; expected 'all' or comma-separated names of {list(TASKS)}")
  return list(dict.fromkeys(names))


def parse_seeds(text: str) -> list[int]:
  """"0-9" | "0,3,5" | "0-2,7" -> sorted trial seeds (there is no 'all': any seed is a variant)."""
  out = set()
  for part in text.split(","):
    lo, _, hi = part.strip().partition("-")
    try:
      out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
      raise ValueError(f"trial seeds {text!r}: {part!r} is not N or N-M; expected e.g. '0-9' or '0,3'") from None
  if not out or min(out) < 0:
    raise ValueError(f"trial seeds {text!r}; expected non-negative integers such as '0-9'")
  return sorted(out)


def to_dataset_orientation(image: np.ndarray) -> np.ndarray:
  """A `corner` camera frame as MuJoCo renders it [H, W, 3] (upside down) -> upright (rotated 180
  degrees), as the dataset stores it."""
  return np.ascontiguousarray(image[::-1, ::-1])


def snap_gripper(effort) -> np.ndarray:
  """Gripper effort(s) -> +1 (close) where > 0, else -1 (open). float [...] -> float32 [...]."""
  return np.where(np.asarray(effort, np.float64) > 0, 1.0, -1.0).astype(np.float32)


def executed_action(action) -> np.ndarray:
  """A 4-D Meta-World action -> the one `step` executes: xyz clipped to [-1, 1], gripper snapped."""
  action = np.asarray(action, np.float64)
  if action.shape != (4,) or not np.all(np.isfinite(action)):
    raise ValueError(f"action {action.tolist()} (shape {action.shape}); expected 4 finite values: "
                     "xyz delta in [-1, 1] and the gripper effort (+1 close, -1 open)")
  return np.concatenate([np.clip(action[:3], -1.0, 1.0), snap_gripper(action[3:])]).astype(np.float32)


def from_common(action) -> np.ndarray:
  """A policy's action in the common 7-D layout [7] -> Meta-World's 4-D (dims 0, 1, 2, 6)."""
  action = np.asarray(action, np.float64)
  if action.shape != (7,):
    raise ValueError(f"action of shape {action.shape}; expected [7] in the common layout (xyz, rotation, gripper)")
  return action[list(COMMON_DIMS)]


def state_from_obs(obs: np.ndarray) -> np.ndarray:
  """float32 [4]: hand xyz and gripper opening (obs[:4])."""
  return np.asarray(obs[:STATE_DIM], np.float32)


def _environments() -> dict:
  from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # noqa: PLC0415 -- the simulator package, heavy
  return ALL_V3_ENVIRONMENTS


class MetaWorldEnv:
  """One Meta-World v3 task. See the module docstring.

  task: e.g. "drawer-open-v3"; resolution: camera height = width; render: whether `images()` may be
  called (creates the renderer); fast_render: cheap render settings; wrist: also render gripperPOV.
  """

  def __init__(self, task: str, *, resolution: int = 128, render: bool = True, fast_render: bool = True,
               wrist: bool = True):
    import mujoco  # noqa: PLC0415
    environments = _environments()
    if task not in environments:
      raise ValueError(f"unknown Meta-World task {task!r}; expected one of {sorted(environments)}")
    if resolution < 8:
      raise ValueError(f"resolution={resolution}; expected at least 8 pixels")
    self.task, self.instruction, self.resolution = task, INSTRUCTIONS[task], resolution
    self.render, self.fast_render, self.wrist = render, fast_render, wrist
    start = time.perf_counter()
    env = environments[task]()
    # Meta-World's MT setting: the goal is part of the observation (the experts read it).
    env._partially_observable = False
    del env.sawyer_observation_space  # a cached property that depends on the flag
    env._set_task_called = True
    env._freeze_rand_vec = True
    self._env = env
    self._renderer = None
    if render:
      if fast_render:
        env.model.vis.quality.offsamples = 0  # read when the GL context is made
      self._renderer = mujoco.Renderer(env.model, resolution, resolution)
      if fast_render:
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    self.creation_seconds = time.perf_counter() - start
    self.seed = None
    self.steps = 0

  @property
  def env(self):
    """The underlying Meta-World env (a SawyerXYZEnv): model, data, _last_rand_vec."""
    return self._env

  @property
  def variant(self) -> np.ndarray | None:
    """The current variant: Meta-World's rand_vec (object / goal placement) of the last reset."""
    return None if self.seed is None else np.array(self._env._last_rand_vec)

  @property
  def max_steps(self) -> int:
    return max_steps(self.task)

  # --- episode --------------------------------------------------------------------------------
  def reset(self, seed: int = 0) -> np.ndarray:
    """Resets to the task's fixed variant for `seed`; returns the 39-D observation."""
    if seed < 0:
      raise ValueError(f"seed={seed}; expected a non-negative trial seed")
    saved = np.random.get_state()
    np.random.seed(seed)  # Meta-World draws variants from the global NumPy state
    try:
      self._env._freeze_rand_vec = False
      obs, _ = self._env.reset()
    finally:
      self._env._freeze_rand_vec = True
      np.random.set_state(saved)
    self.seed, self.steps = seed, 0
    return np.asarray(obs, np.float64)

  def step(self, action) -> tuple[np.ndarray, float, bool, dict]:
    """Executes `executed_action(action)`; returns (obs, reward, success, info) with the executed
    action under info["action"]."""
    if self.seed is None:
      raise RuntimeError("step() before reset(); expected env.reset(seed) first")
    if self.steps >= MAX_PATH_LENGTH:
      raise RuntimeError(f"{self.task}: {self.steps} steps taken; Meta-World allows {MAX_PATH_LENGTH} per episode")
    executed = executed_action(action)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      obs, reward, _, _, info = self._env.step(executed)
    self.steps += 1
    info = {**info, "action": executed}
    return np.asarray(obs, np.float64), float(reward), bool(info["success"]), info

  def images(self) -> tuple[np.ndarray, np.ndarray | None]:
    """(corner, wrist) uint8 [R, R, 3] of the current state: the corner camera rotated upright,
    gripperPOV as rendered (None when the env was made with wrist=False)."""
    if self._renderer is None:
      raise ValueError("the env was created with render=False; expected render=True for camera images")
    self._renderer.update_scene(self._env.data, camera=CAMERAS[0])
    corner = to_dataset_orientation(self._renderer.render())
    wrist = None
    if self.wrist:
      self._renderer.update_scene(self._env.data, camera=CAMERAS[1])
      wrist = self._renderer.render().copy()
    return corner, wrist

  state = staticmethod(state_from_obs)

  def close(self) -> None:
    renderer, self._renderer = getattr(self, "_renderer", None), None
    if renderer is not None:
      renderer.close()
    env, self._env = getattr(self, "_env", None), None
    if env is not None:
      env.close()


def measure_steps_per_second(task: str = "drawer-open-v3", *, steps: int = 100, resolution: int = 128,
                             fast_render: bool = True, wrist: bool = True) -> dict:
  """Env creation/reset time and the stepping rate with every step's cameras rendered."""
  env = MetaWorldEnv(task, resolution=resolution, fast_render=fast_render, wrist=wrist)
  start = time.perf_counter()
  env.reset(0)
  reset_s = time.perf_counter() - start
  env.images()
  start = time.perf_counter()
  for _ in range(steps):
    env.step(NOOP_ACTION)
    env.images()
  rate = steps / (time.perf_counter() - start)
  result = {"task": task, "resolution": resolution, "fast_render": fast_render, "cameras": 1 + wrist,
            "create_s": round(env.creation_seconds, 2), "reset_s": round(reset_s, 3), "steps_per_s": round(rate, 1)}
  env.close()
  return result


if __name__ == "__main__":
  import argparse
  import json
  parser = argparse.ArgumentParser(description="Measure Meta-World env steps/s (fast vs default render).")
  parser.add_argument("--task", default="drawer-open-v3")
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--resolution", type=int, default=128)
  args = parser.parse_args()
  for fast in (True, False):
    for wrist in (False, True):
      print(json.dumps(measure_steps_per_second(args.task, steps=args.steps, resolution=args.resolution,
                                                fast_render=fast, wrist=wrist)), flush=True)
