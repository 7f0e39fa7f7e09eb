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

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

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
  with np.load(path, allow_pickle=False) as f:
    data = {k: f[k] for k in f.files}
  expected = {"image": 4, "wrist_image": 4, "state": 2, "env_state": 2, "action": 2, "instruction": 0, "task": 0,
              "seed": 0}
  for key, ndim in expected.items():
    if key not in data or data[key].ndim != ndim:
      raise ValueError(f"{path}: {key} is {'missing' if key not in data else f'of shape {data[key].shape}'}; "
                       f"expected a {ndim}-d array (see roboalign_jax/eval/metaworld/record.py)")
  n = len(data["action"])
  widths = {"state": STATE_DIM, "env_state": ENV_STATE_DIM, "action": RAW_ACTION_DIM}
  for key in ("image", "wrist_image", "state", "env_state"):
    if len(data[key]) != n:
      raise ValueError(f"{path}: {key} has {len(data[key])} steps; expected {n}, as many as actions")
  for key, width in widths.items():
    if data[key].shape[1] != width:
      raise ValueError(f"{path}: {key} has shape {data[key].shape}; expected [T, {width}]")
  instruction = str(data["instruction"])
  steps = []
  for t in range(n):
    steps.append({
        "observation": {"image": data["image"][t], "wrist_image": data["wrist_image"][t],
                        "state": data["state"][t].astype(np.float32),
                        "env_state": data["env_state"][t].astype(np.float32)},
        "action": data["action"][t].astype(np.float32), "discount": np.float32(1.0),
        "reward": np.float32(t == n - 1), "is_first": t == 0, "is_last": t == n - 1, "is_terminal": t == n - 1,
        "language_instruction": instruction})
  return {"steps": steps, "episode_metadata": {"file_path": os.path.basename(path), "task": str(data["task"]),
                                               "seed": np.int32(data["seed"])}}


def run_simulator(sim_python: str, episodes_dir: str) -> None:
  if not os.path.isfile(sim_python):
    raise app.UsageError(f"--sim_python={sim_python} does not exist; expected the simulator environment's "
                         "python: run `make sim-metaworld` first")
  command = [sim_python, "-m", "roboalign_jax.eval.metaworld.record", f"--tasks={FLAGS.tasks}",
             f"--trials={FLAGS.trials}", f"--out_dir={episodes_dir}", f"--resolution={FLAGS.resolution}"]
  command += ["--default_render"] if FLAGS.default_render else []
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
         "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "egl")}
  print("[record_metaworld] " + " ".join(command), flush=True)
  result = subprocess.run(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL)
  if result.returncode:
    raise RuntimeError(f"the simulator process exited with {result.returncode}: {' '.join(command)}")


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
  if os.path.isdir(episodes_dir):  # a fresh recording: stale files would be written too
    for path in glob.glob(os.path.join(episodes_dir, "*.npz")) + glob.glob(os.path.join(episodes_dir, "episodes.jsonl")):
      os.remove(path)
  os.makedirs(episodes_dir, exist_ok=True)
  start = time.perf_counter()
  run_simulator(FLAGS.sim_python, episodes_dir)
  with open(os.path.join(episodes_dir, "episodes.jsonl")) as f:
    summaries = [json.loads(line) for line in f if line.strip()]
  files = [os.path.join(episodes_dir, s["file"]) for s in summaries if s["success"]]
  failed = [s for s in summaries if not s["success"]]
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
