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

import json
import os
import shutil
import sys
import time

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import sim_recording  # noqa: E402  launch/sim_recording.py, beside this script
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
  return sim_recording.npz_episode(path, widths={"state": 8, "joint_state": 7, "action": 7},
                                   recorder="roboalign_jax/eval/libero/record.py")


def run_simulator(sim_python: str, episodes_dir: str) -> None:
  args = [f"--suite={FLAGS.suite}", f"--tasks={FLAGS.tasks}", f"--init_states={FLAGS.init_states}",
          f"--out_dir={episodes_dir}", f"--resolution={FLAGS.resolution}"] + (
              ["--default_render"] if FLAGS.default_render else [])
  try:
    sim_recording.run_in_simulator(sim_python, "roboalign_jax.eval.libero.record", args, make_target="sim-libero",
                                   tag="record_libero")
  except FileNotFoundError as error:
    raise app.UsageError(str(error)) from None


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
  sim_recording.fresh_episodes_dir(episodes_dir)
  start = time.perf_counter()
  run_simulator(FLAGS.sim_python, episodes_dir)
  summaries, files, failed = sim_recording.read_episode_log(episodes_dir)
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
