"""Evaluate a policy directory on the real Meta-World simulator in closed loop, in one command.

    make sim-metaworld     # once: the simulator environment .venv-metaworld
    python launch/eval_metaworld.py --policy_dir=runs/vla/policy --tasks=drawer-open-v3,pick-place-v3 \\
        --trials=0-9 --workers=2 --out_dir=runs/eval/metaworld

Starts `launch/serve.py` on a free loopback port, waits for its /healthz, runs the simulator-side
harness (roboalign_jax/eval/metaworld/evaluate.py, in `--sim_python`) against it with `--workers`
env processes, and stops the server. Trial k of a task is its fixed variant k. Results:
`<out_dir>/results.jsonl` (one line per trial: suite, task, trial, seed, success, steps,
policy_requests, error, video, ...; a rerun resumes), `summary.md` / `summary.json` (overall
success_rate and per-task `tasks`), `videos/`. Flags after `--` go to the harness (e.g.
`-- --max_steps=50 --videos_per_task=2 --video_format=gif`).
"""

from __future__ import annotations

import os

from absl import app, flags

import local_server  # launch/local_server.py, beside this script

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string("policy_dir", None, "Policy directory to serve (written by a trainer).", required=True)
flags.DEFINE_string("out_dir", None, "Where results, summary and videos go.", required=True)
flags.DEFINE_string("tasks", "drawer-open-v3", "Comma-separated Meta-World v3 task names (or 'all').")
flags.DEFINE_string("trials", "0-9", "Trial seeds per task; trial k is the task's fixed variant k.")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Simulator processes, each with its own env.")
flags.DEFINE_integer("max_batch", 8, "Server: most requests answered by one batched forward.")
flags.DEFINE_string("sim_python", os.path.join(REPO_ROOT, ".venv-metaworld", "bin", "python"),
                    "Python of the simulator environment (`make sim-metaworld`).")
flags.DEFINE_float("server_start_timeout", 600.0, "Seconds to wait for the server's /healthz.")


def main(argv):
  if not os.path.isfile(FLAGS.sim_python):
    raise app.UsageError(f"--sim_python={FLAGS.sim_python} does not exist; create the simulator environment "
                         "with `make sim-metaworld`")
  local_server.run_harness(
      FLAGS.policy_dir, lambda port: [FLAGS.sim_python, "-m", "roboalign_jax.eval.metaworld.evaluate", f"--port={port}",
                                      f"--tasks={FLAGS.tasks}", f"--trials={FLAGS.trials}",
                                      f"--workers={FLAGS.workers}", f"--out_dir={FLAGS.out_dir}", *argv[1:]],
      name="Meta-World", max_batch=FLAGS.max_batch, start_timeout=FLAGS.server_start_timeout)


if __name__ == "__main__":
  app.run(main)
