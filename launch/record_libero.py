"""Records scripted-expert demonstrations on the real LIBERO simulator as an RLDS dataset in the
OpenVLA `libero_*_no_noops` layout, readable by the data pipeline with the `libero` spec.

    make sim-libero        # once: the simulator environment .venv-libero
    python launch/record_libero.py --suite=libero_spatial --tasks=0,1 --init_states=0-4 \\
        --out_dir=/data/rlds_scripted
    # -> /data/rlds_scripted/libero_spatial_no_noops/1.0.0

These are SCRIPTED demonstrations (a privileged-state pick-and-place expert), not LIBERO's human
demonstrations. The rollouts run in the simulator's own environment (a subprocess of
`--sim_python`, which imports neither JAX nor this package's dependencies) and come back as one
.npz per successful episode; this process writes them through a TFDS builder and validates the
result. Failed expert episodes are counted and reported, never written.
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

FLAGS = flags.FLAGS
flags.DEFINE_enum("suite", "libero_spatial", ["libero_spatial", "libero_object", "libero_goal", "libero_10"],
                  "LIBERO suite; the dataset is named <suite>_no_noops.")
flags.DEFINE_string("tasks", "all", "Task ids: 'all', '0,1' or '0-4'.")
flags.DEFINE_string("init_states", "0-4", "Fixed initial states per task: 'all', '0,1' or '0-4'.")
flags.DEFINE_string("out_dir", None, "Data dir; the dataset goes to <out_dir>/<suite>_no_noops/1.0.0.", required=True)
flags.DEFINE_integer("resolution", 256, "Camera height = width (the public datasets: 256).")
flags.DEFINE_string("sim_python", os.path.join(REPO_ROOT, ".venv-libero", "bin", "python"),
                    "Python of the simulator environment (`make sim-libero`).")
flags.DEFINE_string("episodes_dir", "", "Where the simulator writes its .npz episodes (default: "
                    "<out_dir>/<suite>_episodes); kept afterwards.")
flags.DEFINE_bool("overwrite", False, "Replace an existing dataset version directory.")
flags.DEFINE_bool("default_render", False, "Render with MuJoCo's default (slow) settings.")

DESCRIPTION = ("LIBERO {suite} demonstrations by roboalign_jax's SCRIPTED privileged-state expert "
               "(not LIBERO's human demonstrations), in OpenVLA's {suite}_no_noops layout.")


def load_npz_episode(path: str) -> dict:
  """One .npz written by roboalign_jax.eval.libero.record -> the episode dict of the libero layout."""
  with np.load(path, allow_pickle=False) as f:
    data = {k: f[k] for k in f.files}
  expected = {"image": 4, "wrist_image": 4, "state": 2, "joint_state": 2, "action": 2, "instruction": 0}
  for key, ndim in expected.items():
    if key not in data or data[key].ndim != ndim:
      raise ValueError(f"{path}: {key} is {'missing' if key not in data else f'of shape {data[key].shape}'}; "
                       f"expected a {ndim}-d array (see roboalign_jax/eval/libero/record.py)")
  n = len(data["action"])
  widths = {"state": 8, "joint_state": 7, "action": 7}
  for key in ("image", "wrist_image", "state", "joint_state"):
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
                        "joint_state": data["joint_state"][t].astype(np.float32)},
        "action": data["action"][t].astype(np.float32), "discount": np.float32(1.0),
        "reward": np.float32(t == n - 1), "is_first": t == 0, "is_last": t == n - 1, "is_terminal": t == n - 1,
        "language_instruction": instruction})
  return {"steps": steps, "episode_metadata": {"file_path": os.path.basename(path)}}


def run_simulator(sim_python: str, episodes_dir: str) -> None:
  if not os.path.isfile(sim_python):
    raise app.UsageError(f"--sim_python={sim_python} does not exist; expected the simulator environment's "
                         "python: run `make sim-libero` first")
  command = [sim_python, "-m", "roboalign_jax.eval.libero.record", f"--suite={FLAGS.suite}",
             f"--tasks={FLAGS.tasks}", f"--init_states={FLAGS.init_states}", f"--out_dir={episodes_dir}",
             f"--resolution={FLAGS.resolution}"] + (["--default_render"] if FLAGS.default_render else [])
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
         "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "egl")}
  print("[record_libero] " + " ".join(command), flush=True)
  result = subprocess.run(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL)
  if result.returncode:
    raise RuntimeError(f"the simulator process exited with {result.returncode}: {' '.join(command)}")


def main(argv):
  del argv
  out_dir = os.path.abspath(os.path.expanduser(FLAGS.out_dir))
  name = f"{FLAGS.suite}_no_noops"
  version_dir = os.path.join(out_dir, name, "1.0.0")
  if os.path.exists(version_dir):
    if not FLAGS.overwrite:
      raise app.UsageError(f"{version_dir} exists; pass --overwrite to replace it")
    shutil.rmtree(version_dir)
  episodes_dir = FLAGS.episodes_dir or os.path.join(out_dir, f"{FLAGS.suite}_episodes")
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
  print(f"[record_libero] expert: {len(files)} successful, {len(failed)} failed of {len(summaries)} episodes "
        f"({time.perf_counter() - start:.0f}s)", flush=True)
  for s in failed:
    print(f"[record_libero]   failed: task {s['task_id']} init state {s['init_state']} ({s['steps']} steps, "
          f"phase {s['phase']}{', ' + s['error'] if 'error' in s else ''})", flush=True)
  if not files:
    raise RuntimeError(f"no successful expert episode for {FLAGS.suite} tasks {FLAGS.tasks} init states "
                       f"{FLAGS.init_states}; nothing to write")
  shape = (FLAGS.resolution, FLAGS.resolution, 3)
  features = camera_features("libero", {"primary": shape, "wrist": shape}) if FLAGS.resolution != 256 else None
  path = write_episodes("libero", out_dir, (load_npz_episode(p) for p in files), features=features,
                        builder_name=name, description=DESCRIPTION.format(suite=FLAGS.suite))
  report = convert.validate(path, "libero", progress=False)
  print(convert.summary("train", report))
  per_task = {}
  for s in summaries:
    entry = per_task.setdefault(str(s["task_id"]), {"instruction": s["instruction"], "success": 0, "episodes": 0})
    entry["episodes"] += 1
    entry["success"] += int(s["success"])
  result = {"dataset": path, "episodes_written": len(files), "failed_episodes": len(failed),
            "steps": report["steps"], "per_task": per_task, "seconds": round(time.perf_counter() - start, 1)}
  with open(os.path.join(out_dir, f"{name}_recording.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
