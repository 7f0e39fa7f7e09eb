"""Meta-World's own scripted experts (`metaworld.policies.ENV_POLICY_MAP`), one per task.

They read the full 39-D observation (object and goal positions: privileged state) and return a
4-D action; `MetaWorldEnv.step` clips its xyz and snaps its gripper effort to +1 / -1 before
executing it (see env.py), and the executed action is what is recorded.

    env = MetaWorldEnv("drawer-open-v3", render=False)
    result = rollout(env, seed=0)            # {"success": bool, "steps": int, ...}

Run as a module to measure success per task (no rendering):
    python -m roboalign_jax.eval.metaworld.expert --tasks=drawer-open-v3,pick-place-v3 --trials=0-9
"""

from __future__ import annotations

import time
import warnings
from typing import Callable

import numpy as np

from roboalign_jax.eval.metaworld.env import MetaWorldEnv, parse_seeds, parse_tasks


def expert_for(task: str):
  """A fresh instance of the task's scripted policy (`get_action(obs [39]) -> [4]`)."""
  from metaworld.policies import ENV_POLICY_MAP  # noqa: PLC0415 -- the simulator package, heavy
  if task not in ENV_POLICY_MAP:
    raise ValueError(f"Meta-World has no scripted policy for {task!r}; it has {sorted(ENV_POLICY_MAP)}")
  return ENV_POLICY_MAP[task]()


def rollout(env: MetaWorldEnv, seed: int, *, max_steps: int | None = None, record: bool = False,
            on_step: Callable[[np.ndarray, np.ndarray], None] | None = None) -> dict:
  """Runs the expert on the task's fixed variant `seed` until `info["success"]` or `max_steps`
  (default: twice the task's evaluation budget, at most Meta-World's 500).

  record: keep the per-step observations (camera images when the env renders, state, env_state)
  and the executed actions in the result: "frames" (list of dicts), "actions" [T, 4].
  """
  max_steps = min(max_steps or 2 * env.max_steps, 500)
  start = time.perf_counter()
  obs = env.reset(seed)
  expert = expert_for(env.task)
  frames, actions, efforts = [], [], []
  success, steps, error = False, 0, None
  try:
    for steps in range(1, max_steps + 1):
      with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips anyway
        warnings.simplefilter("ignore")
        action = np.asarray(expert.get_action(obs), np.float64)
      frame = None
      if record:
        frame = {"state": env.state(obs), "env_state": obs.astype(np.float32)}
        if env.render:
          frame["image"], wrist = env.images()
          if wrist is not None:
            frame["wrist_image"] = wrist
      if on_step is not None:
        on_step(obs, action)
      obs, _, success, info = env.step(action)
      efforts.append(float(action[3]))
      if record:
        frames.append(frame)
        actions.append(info["action"])
      if success:
        break
  except Exception as exc:  # noqa: BLE001 -- a crashed episode is a failed one, reported with its cause
    error = f"{type(exc).__name__}: {exc}"
  result = {"task": env.task, "seed": seed, "instruction": env.instruction, "success": bool(success) and error is None,
            "steps": steps, "gripper_efforts": sorted(set(round(e, 3) for e in efforts)),
            "seconds": round(time.perf_counter() - start, 2)}
  if error:
    result["error"] = error
  if record:
    result["frames"], result["actions"] = frames, np.asarray(actions, np.float32).reshape(-1, 4)
  return result


def main(argv=None) -> None:
  import argparse  # noqa: PLC0415
  import json  # noqa: PLC0415

  parser = argparse.ArgumentParser(description="Meta-World scripted experts: success per task (no rendering).")
  parser.add_argument("--tasks", default="drawer-open-v3", help="comma-separated task names, or 'all'")
  parser.add_argument("--trials", default="0-9", help="trial seeds: '0-9' or '0,3,5'")
  parser.add_argument("--out", default=None, help="JSONL file, one line per episode")
  args = parser.parse_args(argv)
  out = open(args.out, "a") if args.out else None
  summary = {}
  for task in parse_tasks(args.tasks):
    env = MetaWorldEnv(task, render=False)
    results = [rollout(env, seed) for seed in parse_seeds(args.trials)]
    for result in results:
      print(json.dumps(result), flush=True)
      if out:
        out.write(json.dumps(result) + "\n")
        out.flush()
    good = [r["steps"] for r in results if r["success"]]
    summary[task] = {"success_rate": len(good) / len(results), "mean_steps": float(np.mean(good)) if good else None,
                     "max_steps": max(good) if good else None}
    env.close()
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
