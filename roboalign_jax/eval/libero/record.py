"""Records successful scripted-expert episodes as .npz files (simulator side).

Runs in the simulator environment (`make sim-libero`); `launch/record_libero.py` (main environment)
starts it and writes the files as an RLDS dataset. One file per successful episode:

  image, wrist_image  uint8 [T, R, R, 3]  agentview / eye-in-hand, rotated 180 degrees as in the
                                          public `libero_*_no_noops` datasets
  state               float32 [T, 8]      eef pos, axis-angle (from the xyzw quaternion), gripper qpos
  joint_state         float32 [T, 7]
  action              float32 [T, 7]      OSC_POSE deltas in [-1, 1], gripper -1 open / +1 close
  instruction         str                 the task's language instruction
  suite, task_id, init_state, raw_steps

No-op steps (||action[:6]|| < 1e-4 with the gripper command unchanged from the previous kept step)
are dropped, as OpenVLA's regeneration of the LIBERO datasets drops them. Every episode, failed or
not, gets a line in `<out_dir>/episodes.jsonl`.

    python -m roboalign_jax.eval.libero.record --suite=libero_spatial --tasks=0,1 --init_states=0-4 \\
        --out_dir=/tmp/libero_npz
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from roboalign_jax.eval import closed_loop
from roboalign_jax.eval.libero.env import LiberoEnv, task_names
from roboalign_jax.eval.libero.expert import rollout

NOOP_THRESHOLD = 1e-4


def keep_mask(actions: np.ndarray) -> np.ndarray:
  """bool [T]: the steps that are not no-ops. A step is a no-op when its motion (action[:6]) has
  norm < 1e-4 and its gripper command equals the previous kept step's (for the first step: any
  gripper command)."""
  actions = np.asarray(actions, np.float64)
  if actions.ndim != 2 or actions.shape[1] != 7:
    raise ValueError(f"actions have shape {actions.shape}; expected [T, 7]")
  keep = np.zeros(len(actions), bool)
  previous = None
  for t, action in enumerate(actions):
    still = np.linalg.norm(action[:6]) < NOOP_THRESHOLD
    if still and (previous is None or action[6] == previous[6]):
      continue
    keep[t] = True
    previous = action
  return keep


def record_episode(env: LiberoEnv, init_state: int, out_dir: str, *, max_steps: int | None = None) -> dict:
  """Rolls the expert out from `init_state`; writes the .npz when it succeeds. Returns the summary."""
  result = rollout(env, init_state, max_steps=max_steps, record=True)
  frames, actions = result.pop("frames"), result.pop("actions")
  summary = {k: v for k, v in result.items() if k != "log"}
  if result["success"]:
    keep = keep_mask(actions)
    if not keep.any():
      raise RuntimeError(f"{env.suite_name} task {env.task_id} init state {init_state}: every step is a no-op; "
                         "expected the expert to move")
    kept = [frames[t] for t in np.flatnonzero(keep)]
    name = f"{env.suite_name}_task{env.task_id:02d}_init{init_state:03d}.npz"
    path = os.path.join(out_dir, name)
    np.savez(path + ".tmp.npz", image=np.stack([f["image"] for f in kept]),
             wrist_image=np.stack([f["wrist_image"] for f in kept]),
             state=np.stack([f["state"] for f in kept]), joint_state=np.stack([f["joint_state"] for f in kept]),
             action=actions[keep], instruction=np.array(env.instruction), suite=np.array(env.suite_name),
             task_id=np.int32(env.task_id), init_state=np.int32(init_state), raw_steps=np.int32(len(actions)))
    os.replace(path + ".tmp.npz", path)
    summary.update(file=name, kept_steps=int(keep.sum()), noop_steps=int((~keep).sum()))
  return summary


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--suite", required=True)
  parser.add_argument("--tasks", default="all", help="'all', '0,1' or '0-4'")
  parser.add_argument("--init_states", default="0-4", help="'all', '0,1' or '0-4'")
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--resolution", type=int, default=256)
  parser.add_argument("--max_steps", type=int, default=0, help="0: twice the suite's evaluation budget")
  parser.add_argument("--default_render", action="store_true", help="MuJoCo's default (slow) render settings")
  args = parser.parse_args(argv)
  os.makedirs(args.out_dir, exist_ok=True)
  tasks = closed_loop.index_list(args.tasks, len(task_names(args.suite)))
  with open(os.path.join(args.out_dir, "episodes.jsonl"), "a") as log:
    for task in tasks:
      start = time.perf_counter()
      env = LiberoEnv(args.suite, task, resolution=args.resolution, fast_render=not args.default_render)
      print(f"[record] {args.suite} task {task}: env created in {time.perf_counter() - start:.1f}s", flush=True)
      for init_state in closed_loop.index_list(args.init_states, len(env.init_states)):
        summary = record_episode(env, init_state, args.out_dir, max_steps=args.max_steps or None)
        log.write(json.dumps(summary) + "\n")
        log.flush()
        print("[record] " + json.dumps(summary), flush=True)
      env.close()


if __name__ == "__main__":
  main()
