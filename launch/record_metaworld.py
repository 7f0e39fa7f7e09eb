"""Records Meta-World's scripted experts on the real simulator as an RLDS dataset in the
`metaworld` layout (roboalign_jax/data/specs/metaworld.py), readable by the data pipeline.

    make sim-metaworld     # once: the simulator environment .venv-metaworld
    python launch/record_metaworld.py --tasks=drawer-open-v3,button-press-topdown-v3 --trials=0-9 \\
        --out_dir=/data/metaworld
    # -> /data/metaworld/metaworld_scripted/1.0.0, report /data/metaworld/metaworld_recording.json

Trial k of a task is its fixed variant k (object / goal placement; eval/metaworld/env.py). The
rollouts run in the simulator's own environment (a subprocess of `--sim_python`, which imports
neither JAX nor this package's dependencies) and come back as one .npz per successful episode;
this process writes them through a TFDS builder and validates the result. Failed expert episodes
are counted and reported, never written. The report (`<out_dir>/metaworld_recording.json`):
dataset, episodes_written, failed_episodes, failed [{task, seed, steps}], steps, expert_success
{task: rate}, expert_success_overall, per_task {task: {instruction, episodes, success,
mean_steps}}, resolution, seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import numpy as np
from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import sim_recording  # noqa: E402  launch/sim_recording.py, beside this script
from roboalign_jax.data import convert  # noqa: E402
from roboalign_jax.data.fixtures import camera_features, write_episodes  # noqa: E402
from roboalign_jax.data.specs.metaworld import DATASET_NAME, ENV_STATE_DIM, IMAGE_SHAPE, RAW_ACTION_DIM, STATE_DIM  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("tasks", "drawer-open-v3", "Comma-separated Meta-World v3 task names (or 'all').")
flags.DEFINE_string("trials", "0-9", "Trial seeds, one fixed variant each: '0-9' or '0,3,5'.")
flags.DEFINE_string("out_dir", None, f"Data dir; the dataset goes to <out_dir>/{DATASET_NAME}/1.0.0.", required=True)
flags.DEFINE_integer("resolution", IMAGE_SHAPE[0], "Camera height = width.")
flags.DEFINE_string("sim_python", os.path.join(REPO_ROOT, ".venv-metaworld", "bin", "python"),
                    "Python of the simulator environment (`make sim-metaworld`).")
flags.DEFINE_string("episodes_dir", "", "Where the simulator writes its .npz episodes (default: "
                    "<out_dir>/metaworld_episodes); kept afterwards.")
flags.DEFINE_bool("overwrite", False, "Replace an existing dataset version directory.")
flags.DEFINE_bool("default_render", False, "Render with MuJoCo's default (slow) settings.")

DESCRIPTION = ("Meta-World v3 demonstrations by Meta-World's SCRIPTED experts (metaworld.policies), recorded "
               "by roboalign_jax with the gripper snapped to +-1; tasks: {tasks}.")
REPORT = "metaworld_recording.json"


def load_npz_episode(path: str) -> dict:
  """One .npz written by roboalign_jax.eval.metaworld.record -> the episode dict of the layout."""
  return sim_recording.npz_episode(
      path, widths={"state": STATE_DIM, "env_state": ENV_STATE_DIM, "action": RAW_ACTION_DIM},
      recorder="roboalign_jax/eval/metaworld/record.py", metadata_keys=("task", "seed"),
      metadata=lambda data: {"task": str(data["task"]), "seed": np.int32(data["seed"])})


def run_simulator(sim_python: str, episodes_dir: str) -> None:
  args = [f"--tasks={FLAGS.tasks}", f"--trials={FLAGS.trials}", f"--out_dir={episodes_dir}",
          f"--resolution={FLAGS.resolution}"] + (["--default_render"] if FLAGS.default_render else [])
  try:
    sim_recording.run_in_simulator(sim_python, "roboalign_jax.eval.metaworld.record", args,
                                   make_target="sim-metaworld", tag="record_metaworld")
  except FileNotFoundError as error:
    raise app.UsageError(str(error)) from None


def report(summaries: list[dict], path: str, validation: dict, seconds: float) -> dict:
  per_task: dict[str, dict] = {}
  for s in summaries:
    entry = per_task.setdefault(s["task"], {"instruction": s["instruction"], "episodes": 0, "success": 0, "steps": []})
    entry["episodes"] += 1
    entry["success"] += int(s["success"])
    if s["success"]:
      entry["steps"].append(s["steps"])
  for entry in per_task.values():
    steps = entry.pop("steps")
    entry["mean_steps"] = round(float(np.mean(steps)), 1) if steps else None
  failed = [{"task": s["task"], "seed": s["seed"], "steps": s["steps"], **({"error": s["error"]} if "error" in s else {})}
            for s in summaries if not s["success"]]
  written = sum(s["success"] for s in summaries)
  return {"dataset": path, "episodes_written": written, "failed_episodes": len(failed), "failed": failed,
          "steps": validation["steps"],
          "expert_success": {t: e["success"] / e["episodes"] for t, e in per_task.items()},
          "expert_success_overall": written / len(summaries), "per_task": per_task,
          "resolution": FLAGS.resolution, "seconds": round(seconds, 1)}


def main(argv):
  del argv
  out_dir = os.path.abspath(os.path.expanduser(FLAGS.out_dir))
  version_dir = os.path.join(out_dir, DATASET_NAME, "1.0.0")
  if os.path.exists(version_dir):
    if not FLAGS.overwrite:
      raise app.UsageError(f"{version_dir} exists; pass --overwrite to replace it")
    shutil.rmtree(version_dir)
  episodes_dir = FLAGS.episodes_dir or os.path.join(out_dir, "metaworld_episodes")
  sim_recording.fresh_episodes_dir(episodes_dir)
  start = time.perf_counter()
  run_simulator(FLAGS.sim_python, episodes_dir)
  summaries, files, failed = sim_recording.read_episode_log(episodes_dir)
  print(f"[record_metaworld] expert: {len(files)} successful, {len(failed)} failed of {len(summaries)} episodes "
        f"({time.perf_counter() - start:.0f}s)", flush=True)
  for s in failed:
    print(f"[record_metaworld]   failed: {s['task']} seed {s['seed']} ({s['steps']} steps"
          f"{', ' + s['error'] if 'error' in s else ''})", flush=True)
  if not files:
    raise RuntimeError(f"no successful expert episode for tasks {FLAGS.tasks} trials {FLAGS.trials}; nothing to write")
  shape = (FLAGS.resolution, FLAGS.resolution, 3)
  features = camera_features("metaworld", {"primary": shape, "wrist": shape}) if shape != IMAGE_SHAPE else None
  tasks = sorted({s["task"] for s in summaries})
  path = write_episodes("metaworld", out_dir, (load_npz_episode(p) for p in files), features=features,
                        builder_name=DATASET_NAME, description=DESCRIPTION.format(tasks=", ".join(tasks)))
  validation = convert.validate(path, "metaworld", progress=False)
  print(convert.summary("train", validation))
  result = report(summaries, path, validation, time.perf_counter() - start)
  with open(os.path.join(out_dir, REPORT), "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
