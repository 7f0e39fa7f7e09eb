"""Closed-loop LIBERO evaluation of a policy served over the openpi protocol (launch/serve.py).

Runs in the simulator environment (`make sim-libero`), with the repository on PYTHONPATH; imports
neither JAX nor the training package. `launch/eval_libero.py` starts the server and this in one
command; to evaluate an already running server:

    PYTHONPATH=. .venv-libero/bin/python -m roboalign_jax.eval.libero.evaluate --port=8000 \\
        --suite=libero_spatial --trials=50 --workers=2 --out_dir=runs/eval/libero_spatial

The protocol is openpi's LIBERO example (DESIGN §3): trial k of a task starts from the task's fixed
initial state k; the first 10 steps send the no-op action (objects settle) and count against the
suite's step budget (spatial 220, object 280, goal 300, libero_10 520, libero_90 400, plus the 10);
the MuJoCo model is rebuilt at every reset, as openpi's evaluation does (`--soft_reset` keeps it);
both cameras are rotated 180 degrees and resized with padding to the policy's input size; the
state is eef position + axis-angle + gripper qpos; the first 5 actions of each chunk are executed
before re-planning; success is the env's done flag; an exception ends the trial as a failure.

Each trial's result is appended to `<out_dir>/results.jsonl` as it finishes, so an interrupted
evaluation resumes where it stopped. Workers are processes, each with its own env and its own
connection to the one server. The first `--videos_per_task` trials of each task are saved as
MP4 under `<out_dir>/videos/`. `summary.md` / `summary.json` hold the per-task and per-suite tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import numpy as np
import tqdm

from roboalign_jax.eval import closed_loop, jsonl_log
from roboalign_jax.eval.libero.env import MAX_STEPS, NOOP_ACTION, SUITES, LiberoEnv

NUM_WAIT_STEPS = 10
REPLAN = 5
RESULTS_FILE = "results.jsonl"

_worker: dict = {}  # per worker process: the client, its settings and the current env


def observation_request(env: LiberoEnv, obs: dict, image_size: tuple[int, int] | None) -> dict:
  """The openpi LIBERO request for one observation: cameras upright, resized with padding to the
  policy's input size (less to send; the policy resizes again if needed), state [8], instruction."""
  from openpi_client import image_tools  # noqa: PLC0415 -- the simulator environment's client
  agentview, wrist = env.images(obs)
  if image_size is not None:
    agentview = image_tools.convert_to_uint8(image_tools.resize_with_pad(agentview, *image_size))
    wrist = image_tools.convert_to_uint8(image_tools.resize_with_pad(wrist, *image_size))
  return {"observation/image": agentview, "observation/wrist_image": wrist,
          "observation/state": env.state(obs), "prompt": str(env.instruction)}


def run_trial(env: LiberoEnv, chunks: closed_loop.ActionChunks, init_state: int, max_steps: int,
              image_size: tuple[int, int] | None, record: bool = False) -> tuple[dict, list[np.ndarray]]:
  """One episode from the task's fixed initial state `init_state`; returns (result, frames)."""
  start, frames, steps, success, error = time.perf_counter(), [], 0, False, None
  try:
    obs = env.reset(init_state)
    chunks.reset()
    while steps < max_steps + NUM_WAIT_STEPS:
      if steps < NUM_WAIT_STEPS:
        action = NOOP_ACTION
      else:
        action = chunks.act(lambda: observation_request(env, obs, image_size))
      obs, _, done, _ = env.step(action)
      steps += 1
      if record:
        frames.append(env.images(obs)[0])
      if done:
        success = True
        break
  except Exception as exc:  # the protocol: any failure inside an episode is a failed trial, logged
    error = f"{type(exc).__name__}: {exc}"
    print(f"trial failed with an exception:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
  result = {"success": success, "steps": steps, "policy_requests": chunks.requests, "error": error,
            "seconds": round(time.perf_counter() - start, 2)}
  return result, frames


def write_video(path: str, frames: list[np.ndarray], fps: int = 20) -> str:
  import imageio  # noqa: PLC0415 -- simulator environment only
  os.makedirs(os.path.dirname(path), exist_ok=True)
  imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
  return path


def _init_worker(settings: dict) -> None:
  from openpi_client import websocket_client_policy  # noqa: PLC0415
  client = websocket_client_policy.WebsocketClientPolicy(settings["host"], settings["port"],
                                                         api_key=settings.get("api_key"))
  metadata = client.get_server_metadata()
  size = settings.get("image_size") or metadata.get("image_size")
  _worker.update(client=client, settings=settings, image_size=tuple(size) if size else None, env=None)


def _run_job(job: tuple[str, int, int]) -> dict:
  suite, task_id, trial = job
  settings = _worker["settings"]
  env = _worker["env"]
  if env is None or (env.suite_name, env.task_id) != (suite, task_id):
    if env is not None:
      env.close()
    env = _worker["env"] = LiberoEnv(suite, task_id, resolution=settings["resolution"],
                                     fast_render=settings["fast_render"], hard_reset=settings["hard_reset"],
                                     seed=settings["seed"])
  if trial >= len(env.init_states):
    raise ValueError(f"trial {trial} of {suite} task {task_id}: the task has {len(env.init_states)} initial states")
  record = trial < settings["videos_per_task"]
  chunks = closed_loop.ActionChunks(_worker["client"].infer, settings["replan"])
  result, frames = run_trial(env, chunks, trial, settings["max_steps"] or MAX_STEPS[suite], _worker["image_size"],
                             record=record)
  result.update(suite=suite, task_id=task_id, trial=trial, init_state=trial, instruction=str(env.instruction))
  if record and frames:
    outcome = "success" if result["success"] else "failure"
    path = os.path.join(settings["out_dir"], "videos", f"{suite}_task{task_id:02d}_trial{trial:02d}_{outcome}.mp4")
    try:
      result["video"] = os.path.relpath(write_video(path, frames), settings["out_dir"])
    except Exception as exc:  # a missing video must not lose the trial's result
      result["video_error"] = f"{type(exc).__name__}: {exc}"
      print(f"warning: could not write {path}: {result['video_error']}", file=sys.stderr, flush=True)
  return result


def summarize(results: list[dict], out_dir: str, name: str = "policy") -> dict:
  """Writes summary.json and summary.md (paper Table 2 shape + per-task table); returns the summary."""
  summary = {"trials": len(results), "success_rate": float(np.mean([r["success"] for r in results])),
             "suites": closed_loop.success_by(results, "suite"),
             "tasks": {f"{s}/{t}": v for (s, t), v in closed_loop.success_by(
                 [{**r, "key": (r["suite"], r["task_id"])} for r in results], "key").items()},
             "errors": sum(r["error"] is not None for r in results)}
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(f"# LIBERO closed loop: {name}\n\n{closed_loop.suite_table({name: results})}\n\n"
            f"{closed_loop.task_table(results)}\n")
    videos = sorted(r["video"] for r in results if r.get("video"))
    if videos:
      f.write("\nVideos: " + ", ".join(f"[{os.path.basename(v)}]({v})" for v in videos) + "\n")
  return summary


def evaluate(settings: dict, suites: list[str], tasks: str, trials: str, workers: int) -> dict:
  from libero.libero import benchmark  # noqa: PLC0415
  log = jsonl_log.ResumableLog(os.path.join(settings["out_dir"], RESULTS_FILE), ("suite", "task_id", "trial"))
  jobs = []
  for suite in suites:
    task_suite = benchmark.get_benchmark_dict()[suite]()
    for task_id in closed_loop.index_list(tasks, task_suite.n_tasks):
      count = len(task_suite.get_task_init_states(task_id))
      jobs += [(suite, task_id, k) for k in closed_loop.index_list(trials, count) if not log.done((suite, task_id, k))]
  done_before = len(log.records)
  print(f"{len(jobs)} trials to run ({done_before} already in {log.path}), {workers} workers", flush=True)
  start = time.perf_counter()
  with tqdm.tqdm(total=len(jobs), desc="LIBERO trials", unit="trial") as bar:
    def progress(result, rate):
      bar.set_postfix(success=f"{100 * rate:.1f}%")
      bar.update(1)
      bar.write(f"{result['suite']} task {result['task_id']} trial {result['trial']}: "
                f"{'success' if result['success'] else 'failure'} in {result['steps']} steps ({result['seconds']:.0f} s)")

    closed_loop.run_jobs(jobs, log, workers=workers, initializer=_init_worker, initargs=(settings,), run_job=_run_job,
                         progress=progress)
  summary = summarize(log.records, settings["out_dir"], settings.get("name", "policy"))
  summary["wall_seconds"] = round(time.perf_counter() - start, 1)
  return summary


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, default=8000)
  parser.add_argument("--api_key", default=None)
  parser.add_argument("--suite", default="libero_spatial", help=f"comma-separated, of {SUITES}")
  parser.add_argument("--tasks", default="all", help="'all', 'k', 'a,b' or 'a-b'")
  parser.add_argument("--trials", default="0-49", help="trial k starts from the task's initial state k")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--resolution", type=int, default=256, help="camera size rendered by the simulator")
  parser.add_argument("--image_size", type=int, nargs=2, default=None,
                      help="resize-with-pad target (H W); default: the policy's, from the server metadata")
  parser.add_argument("--replan", type=int, default=REPLAN)
  parser.add_argument("--max_steps", type=int, default=0, help="0: the suite's budget")
  parser.add_argument("--videos_per_task", type=int, default=1)
  parser.add_argument("--default_render", action="store_true", help="MuJoCo's default (slow) render settings")
  parser.add_argument("--soft_reset", action="store_true",
                      help="keep the MuJoCo model between trials instead of rebuilding it at every reset as "
                      "openpi's LIBERO evaluation does (the fixed initial state is the same; ~5 s faster per trial)")
  parser.add_argument("--seed", type=int, default=7)
  parser.add_argument("--name", default="policy", help="row name in the summary table")
  args = parser.parse_args(argv)
  suites = args.suite.split(",")
  unknown = [s for s in suites if s not in SUITES]
  if unknown:
    parser.error(f"unknown suites {unknown}; expected some of {SUITES}")
  os.makedirs(args.out_dir, exist_ok=True)
  settings = {"host": args.host, "port": args.port, "api_key": args.api_key, "resolution": args.resolution,
              "image_size": args.image_size, "replan": args.replan, "max_steps": args.max_steps,
              "videos_per_task": args.videos_per_task, "fast_render": not args.default_render,
              "hard_reset": not args.soft_reset, "seed": args.seed,
              "out_dir": os.path.abspath(args.out_dir), "name": args.name}
  summary = evaluate(settings, suites, args.tasks, args.trials, args.workers)
  print(open(os.path.join(args.out_dir, "summary.md")).read())
  print(json.dumps({k: summary[k] for k in ("trials", "success_rate", "errors", "wall_seconds")}))


if __name__ == "__main__":
  main()
