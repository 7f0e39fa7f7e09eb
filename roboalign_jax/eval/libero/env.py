"""A LIBERO task on the real simulator (LIBERO's env code on robosuite 1.4 + MuJoCo).

Runs in the simulator environment (`make sim-libero`); imports numpy, LIBERO, robosuite, MuJoCo.

    env = LiberoEnv("libero_spatial", task_id=0, resolution=256)
    obs = env.reset(init_state=0)            # the benchmark's fixed initial state 0
    obs, reward, done, info = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    agentview, wrist = env.images(obs)       # rotated 180 degrees, as the RLDS datasets store them
    state = env.state(obs)                   # [8]: eef pos, axis-angle, gripper qpos

Actions are 7-D OSC_POSE deltas in [-1, 1] (xyz scaled by 0.05 m, rotation by 0.5 rad, world
frame) and the gripper: -1 open, +1 close.

Rendering: `fast_render=True` (default) turns off MuJoCo's offscreen multisampling, shadows and
reflections, which cost most of the frame time on a CPU renderer; `fast_render=False` keeps
MuJoCo's defaults. `render=False` skips the cameras altogether (for measuring the expert).
"""

from __future__ import annotations

import os
import time

# Headless rendering through EGL (Mesa); must be set before robosuite / MuJoCo are imported.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402

from roboalign_jax.eval.libero.rotations import quat_to_axis_angle  # noqa: E402

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# openpi's per-suite step budgets (DESIGN §3, closed-loop protocol).
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
NOOP_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
CAMERAS = ("agentview", "robot0_eye_in_hand")


def to_dataset_orientation(image: np.ndarray) -> np.ndarray:
  """A camera frame as robosuite returns it [H, W, 3] -> rotated 180 degrees (upright), as stored in
  the `libero_*_no_noops` datasets. (The same as roboalign_jax.data.specs.libero's function, kept
  here because the simulator environment cannot import the data package.)"""
  return np.ascontiguousarray(image[::-1, ::-1])


def state_from_obs(obs: dict) -> np.ndarray:
  """float32 [8]: eef position (3), axis-angle of the xyzw eef quaternion (3), gripper qpos (2)."""
  return np.concatenate([obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"]),
                         obs["robot0_gripper_qpos"]]).astype(np.float32)


def joint_state_from_obs(obs: dict) -> np.ndarray:
  """float32 [7]: the arm's joint positions."""
  return np.asarray(obs["robot0_joint_pos"], np.float32)


def _benchmark():
  from libero.libero import benchmark  # noqa: PLC0415 -- the simulator package, heavy
  return benchmark.get_benchmark_dict()


def task_names(suite: str) -> list[str]:
  """The language instructions of a suite's tasks, in task-id order."""
  benchmarks = _benchmark()
  if suite not in benchmarks:
    raise ValueError(f"unknown LIBERO suite {suite!r}; expected one of {SUITES}")
  tasks = benchmarks[suite]()
  return [tasks.get_task(i).language for i in range(tasks.n_tasks)]


class LiberoEnv:
  """One LIBERO task. See the module docstring.

  suite: "libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90";
  task_id: index within the suite; resolution: camera height = width; render: produce camera
  images; fast_render: cheap render settings (see module docstring); hard_reset: rebuild the
  MuJoCo model on every reset as LIBERO's evaluation does (slow, ~5 s); the initial state set by
  `reset` is the same either way.
  """

  def __init__(self, suite: str, task_id: int, *, resolution: int = 256, render: bool = True,
               fast_render: bool = True, hard_reset: bool = False, seed: int = 7):
    from libero.libero import get_libero_path  # noqa: PLC0415
    from libero.libero.envs.env_wrapper import ControlEnv  # noqa: PLC0415
    benchmarks = _benchmark()
    if suite not in benchmarks:
      raise ValueError(f"unknown LIBERO suite {suite!r}; expected one of {SUITES}")
    self.suite_name = suite
    self._suite = benchmarks[suite]()
    if not 0 <= task_id < self._suite.n_tasks:
      raise ValueError(f"task_id={task_id} for {suite}; expected 0..{self._suite.n_tasks - 1}")
    if resolution < 8:
      raise ValueError(f"resolution={resolution}; expected at least 8 pixels")
    self.task_id = task_id
    self.task = self._suite.get_task(task_id)
    self.instruction = self.task.language
    self.init_states = np.asarray(self._suite.get_task_init_states(task_id))
    self.render, self.fast_render, self.resolution = render, fast_render, resolution
    bddl = os.path.join(get_libero_path("bddl_files"), self.task.problem_folder, self.task.bddl_file)
    if not os.path.isfile(bddl):
      raise FileNotFoundError(f"BDDL file {bddl} of {suite} task {task_id} is missing; expected the "
                              "LIBERO package (`make sim-libero`) to ship it")
    start = time.perf_counter()
    self._env = ControlEnv(
        bddl_file_name=bddl, camera_heights=resolution, camera_widths=resolution, hard_reset=hard_reset,
        has_renderer=False, has_offscreen_renderer=render, use_camera_obs=render)
    self._env.seed(seed)
    self.creation_seconds = time.perf_counter() - start
    self._patched_context = None

  # --- properties of the underlying robosuite env -------------------------------------------
  @property
  def robosuite_env(self):
    """The LIBERO problem env (a robosuite ManipulationEnv): sim, objects_dict, parsed_problem."""
    return self._env.env

  @property
  def sim(self):
    return self._env.env.sim

  @property
  def goal_state(self) -> list[list[str]]:
    """The BDDL goal, e.g. [["on", "akita_black_bowl_1", "plate_1"]]."""
    return [list(g) for g in self._env.env.parsed_problem["goal_state"]]

  # --- episode --------------------------------------------------------------------------------
  def reset(self, init_state: int = 0) -> dict:
    """Resets and sets the task's fixed initial state `init_state`; returns the observation."""
    if not 0 <= init_state < len(self.init_states):
      raise ValueError(f"init_state={init_state} for {self.suite_name} task {self.task_id}; expected "
                       f"0..{len(self.init_states) - 1}")
    self._env.reset()
    self._apply_render_settings()
    return self._env.set_init_state(self.init_states[init_state])

  def step(self, action) -> tuple[dict, float, bool, dict]:
    action = np.asarray(action, np.float64)
    if action.shape != (7,) or not np.all(np.isfinite(action)):
      raise ValueError(f"action {action.tolist()} (shape {action.shape}); expected 7 finite values: "
                       "OSC delta xyz, delta rotation, gripper (-1 open, +1 close)")
    return self._env.step(action)

  def check_success(self) -> bool:
    return bool(self._env.check_success())

  def images(self, obs: dict) -> tuple[np.ndarray, np.ndarray]:
    """(agentview, wrist) uint8 [R, R, 3], rotated 180 degrees as the datasets store them."""
    if "agentview_image" not in obs:
      raise ValueError("observation has no camera images; expected an env created with render=True")
    return (to_dataset_orientation(obs["agentview_image"]), to_dataset_orientation(obs["robot0_eye_in_hand_image"]))

  state = staticmethod(state_from_obs)
  joint_state = staticmethod(joint_state_from_obs)

  def close(self) -> None:
    env, self._env = getattr(self, "_env", None), None
    if env is not None:
      env.close()

  # --- rendering --------------------------------------------------------------------------------
  def _apply_render_settings(self) -> None:
    """Cheap rendering on the current offscreen context (a hard reset creates a new one)."""
    import mujoco  # noqa: PLC0415
    if not (self.render and self.fast_render):
      return
    context = self.sim._render_context_offscreen
    if context is None or context is self._patched_context:
      return
    context.gl_ctx.make_current()
    # Multisampling is a property of the offscreen buffer: rebuild the GPU context without it.
    context.model._model.vis.quality.offsamples = 0
    context.con.free()
    context._set_mujoco_context_and_buffers()
    context.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    self._patched_context = context


def measure_steps_per_second(suite: str = "libero_spatial", task_id: int = 0, *, steps: int = 50,
                             resolution: int = 256, fast_render: bool = True) -> dict:
  """Env creation/reset time and stepping rate with both cameras rendered (no-op actions)."""
  env = LiberoEnv(suite, task_id, resolution=resolution, fast_render=fast_render)
  start = time.perf_counter()
  env.reset(0)
  reset_s = time.perf_counter() - start
  env.step(NOOP_ACTION)
  start = time.perf_counter()
  for _ in range(steps):
    env.step(NOOP_ACTION)
  rate = steps / (time.perf_counter() - start)
  result = {"suite": suite, "task_id": task_id, "resolution": resolution, "fast_render": fast_render,
            "create_s": round(env.creation_seconds, 2), "reset_s": round(reset_s, 2), "steps_per_s": round(rate, 2)}
  env.close()
  return result


if __name__ == "__main__":
  import argparse
  import json
  parser = argparse.ArgumentParser(description="Measure LIBERO env steps/s (fast vs default render).")
  parser.add_argument("--suite", default="libero_spatial")
  parser.add_argument("--task", type=int, default=0)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--resolution", type=int, default=256)
  args = parser.parse_args()
  for fast in (True, False):
    print(json.dumps(measure_steps_per_second(args.suite, args.task, steps=args.steps, resolution=args.resolution,
                                              fast_render=fast)), flush=True)
