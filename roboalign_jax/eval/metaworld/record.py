"""Records successful scripted-expert episodes as .npz files (simulator side).

Runs in the simulator environment (`make sim-metaworld`); `launch/record_metaworld.py` (main
environment) starts it and writes the files as an RLDS dataset. One file per successful episode,
`<task>_seed<seed:03d>.npz`:

  image, wrist_image  uint8 [T, R, R, 3]  corner camera rotated upright / gripperPOV, each step's
                                          observation before its action
  state               float32 [T, 4]      hand xyz, gripper opening (obs[:4])
  env_state           float32 [T, 39]     Meta-World's full observation
  action              float32 [T, 4]      the EXECUTED action: xyz clipped to [-1, 1], gripper
                                          snapped to +1 close / -1 open (see env.py)
  instruction         str                 the task's instruction
  task, seed, raw_steps

The episode ends at the first step whose `info["success"]` is set; no step is dropped (the
experts' still steps wait for the gripper). Every episode, failed or not, gets a line in
`<out_dir>/episodes.jsonl`.

    python -m roboalign_jax.eval.metaworld.record --tasks=drawer-open-v3,pick-place-v3 --trials=0-9 \\
        --out_dir=/tmp/metaworld_npz
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from roboalign_jax.eval.metaworld.env import MetaWorldEnv, parse_seeds, parse_tasks
from roboalign_jax.eval.metaworld.expert import rollout


def episode_file(task: str, seed: int) -> str:
  return f"{task}_seed{seed:03d}.npz"


def record_episode(env: MetaWorldEnv, seed: int, out_dir: str, *, max_steps: int | None = None) -> dict:
  """Rolls the expert out on variant `seed`; writes the .npz when it succeeds. Returns the summary."""
  result = rollout(env, seed, max_steps=max_steps, record=True)
  frames, actions = result.pop("frames"), result.pop("actions")
  summary = dict(result)
  if result["success"]:
    name = episode_file(env.task, seed)
    path = os.path.join(out_dir, name)
    np.savez(path + ".tmp.npz", image=np.stack([f["image"] for f in frames]),
             wrist_image=np.stack([f["wrist_image"] for f in frames]),
             state=np.stack([f["state"] for f in frames]), env_state=np.stack([f["env_state"] for f in frames]),
             action=actions, instruction=np.array(env.instruction), task=np.array(env.task),
             seed=np.int32(seed), raw_steps=np.int32(len(actions)))
    os.replace(path + ".tmp.npz", path)
    summary.update(file=name)
  return summary


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tasks", required=True, help="comma-separated Meta-World task names, or 'all'")
  parser.add_argument("--trials", default="0-9", help="trial seeds (one fixed variant each): '0-9' or '0,3'")
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--resolution", type=int, default=128)
  parser.add_argument("--max_steps", type=int, default=0, help="0: twice the task's evaluation budget (<= 500)")
  parser.add_argument("--default_render", action="store_true", help="MuJoCo's default (slow) render settings")
  args = parser.parse_args(argv)
  os.makedirs(args.out_dir, exist_ok=True)
  tasks, seeds = parse_tasks(args.tasks), parse_seeds(args.trials)
  with open(os.path.join(args.out_dir, "episodes.jsonl"), "a") as log:
    for task in tasks:
      start = time.perf_counter()
      env = MetaWorldEnv(task, resolution=args.resolution, fast_render=not args.default_render)
      print(f"[record] {task}: env created in {time.perf_counter() - start:.1f}s", flush=True)
      for seed in seeds:
        summary = record_episode(env, seed, args.out_dir, max_steps=args.max_steps or None)
        log.write(json.dumps(summary) + "\n")
        log.flush()
        print("[record] " + json.dumps(summary), flush=True)
      env.close()


if __name__ == "__main__":
  main()
