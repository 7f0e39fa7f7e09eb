"""Evaluate a policy directory on the real LIBERO simulator in closed loop, in one command.

    make sim-libero     # once: the simulator environment .venv-libero
    python launch/eval_libero.py --policy_dir=runs/vla/policy --suite=libero_spatial \\
        --trials=0-49 --workers=4 --out_dir=runs/eval/libero_spatial

Starts `launch/serve.py` on a free loopback port, waits for its /healthz, runs the simulator-side
harness (roboalign_jax/eval/libero/evaluate.py, in `--sim_python`) against it with `--workers`
env processes, and stops the server. Results: `<out_dir>/results.jsonl` (one line per trial; a
rerun resumes), `summary.md` / `summary.json`, `videos/`. Flags after `--` go to the harness
(e.g. `-- --max_steps=50 --videos_per_task=2`).
"""

from __future__ import annotations

import os

from absl import app, flags

import local_server  # launch/local_server.py, beside this script

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string("policy_dir", None, "Policy directory to serve (written by a trainer).", required=True)
flags.DEFINE_string("out_dir", None, "Where results, summary and videos go.", required=True)
flags.DEFINE_string("suite", "libero_spatial", "Comma-separated LIBERO suites.")
flags.DEFINE_string("tasks", "all", "Task ids: 'all', 'k', 'a,b' or 'a-b'.")
flags.DEFINE_string("trials", "0-49", "Trials per task; trial k starts from the task's fixed initial state k.")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Simulator processes, each with its own env.")
flags.DEFINE_integer("max_batch", 8, "Server: most requests answered by one batched forward.")
flags.DEFINE_string("sim_python", os.path.join(REPO_ROOT, ".venv-libero", "bin", "python"),
                    "Python of the simulator environment (`make sim-libero`).")
flags.DEFINE_float("server_start_timeout", 600.0, "Seconds to wait for the server's /healthz.")


def main(argv):
  if not os.path.isfile(FLAGS.sim_python):
    raise app.UsageError(f"--sim_python={FLAGS.sim_python} does not exist; create the simulator environment "
                         "with `make sim-libero`")
  local_server.run_harness(
      FLAGS.policy_dir, lambda port: [FLAGS.sim_python, "-m", "roboalign_jax.eval.libero.evaluate", f"--port={port}",
                                      f"--suite={FLAGS.suite}", f"--tasks={FLAGS.tasks}", f"--trials={FLAGS.trials}",
                                      f"--workers={FLAGS.workers}", f"--out_dir={FLAGS.out_dir}", *argv[1:]],
      name="LIBERO", max_batch=FLAGS.max_batch, start_timeout=FLAGS.server_start_timeout)


if __name__ == "__main__":
  app.run(main)
