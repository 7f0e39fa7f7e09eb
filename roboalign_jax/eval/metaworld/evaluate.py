"""Closed-loop Meta-World evaluation of a policy served over the openpi protocol (launch/serve.py).

Runs in the simulator environment (`make sim-metaworld`), with the repository on PYTHONPATH;
imports neither JAX nor the training package. `launch/eval_metaworld.py` starts the server and
this in one command; to evaluate an already running server:

    PYTHONPATH=. .venv-metaworld/bin/python -m roboalign_jax.eval.metaworld.evaluate --port=8000 \\
        --tasks=drawer-open-v3,pick-place-v3 --trials=0-9 --workers=2 --out_dir=runs/eval/metaworld

The protocol, the openpi LIBERO client's carried over to Meta-World: trial k of a task is its
fixed variant k (`MetaWorldEnv.reset(k)`: the object / goal placement of Meta-World's
`<task>-goal-observable` env with seed k), the same in every process and run; the request holds
the corner camera (rotated upright) and, when the policy reads it, the gripperPOV camera, both
resized with padding to the policy's input size, the proprio state (hand xyz, gripper opening:
obs[:4]) and the task's instruction; the policy answers [H, 7] actions in the common layout, of
which dims 0, 1, 2, 6 drive the env (gripper snapped to +-1); the first 5 actions of each chunk are
executed before re-planning; the trial succeeds at the first step whose `info["success"]` is set,
and fails after the task's step budget (env.MAX_STEPS; `--max_steps` overrides it) or on an
exception.

Each trial's result is appended to `<out_dir>/results.jsonl` as it finishes (keys: suite
"metaworld", task, trial, seed, success, steps, policy_requests, error, seconds, instruction,
max_steps, and video for the recorded trials), so an interrupted evaluation resumes where it
stopped. Workers are processes, each with its own env and its own connection to the one server.
The first `--videos_per_task` trials of each task are saved under `<out_dir>/videos/` as MP4 or
GIF (`--video_format=gif`: a markdown report shows it inline). `summary.md` / `summary.json` hold
the overall and per-task success rates.
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
from roboalign_jax.eval.metaworld.env import (MAX_PATH_LENGTH, MetaWorldEnv, from_common, max_steps, parse_seeds,
                                              parse_tasks)

SUITE = "metaworld"
REPLAN = 5
RESULTS_FILE = "results.jsonl"
# Request keys of the metaworld layout per common camera name (data/specs/metaworld.py).
CAMERA_KEYS = {"primary": "observation/image", "wrist": "observation/wrist_image"}

_worker: dict = {}  # per worker process: the client, its settings and the current env


def observation_request(env: MetaWorldEnv, obs: np.ndarray, image_size: tuple[int, int] | None) -> dict:
  """The request for one observation: cameras (upright corner, gripperPOV when the env renders
  it), resized with padding to the policy's input size (less to send; the policy resizes again if
  needed), state [4], instruction."""
  from openpi_client import image_tools  # noqa: PLC0415 -- the simulator environment's client
  corner, wrist = env.images()
  request = {CAMERA_KEYS["primary"]: corner}
  if wrist is not None:
    request[CAMERA_KEYS["wrist"]] = wrist
  if image_size is not None:
    request = {k: image_tools.convert_to_uint8(image_tools.resize_with_pad(v, *image_size)) for k, v in request.items()}
  return {**request, "observation/state": env.state(obs), "prompt": str(env.instruction)}


def run_trial(env: MetaWorldEnv, chunks: closed_loop.ActionChunks, seed: int, max_steps: int,
              image_size: tuple[int, int] | None, record: bool = False) -> tuple[dict, list[np.ndarray]]:
  """One episode on the task's fixed variant `seed`; returns (result, frames)."""
  start, frames, steps, success, error = time.perf_counter(), [], 0, False, None
  try:
    obs = env.reset(seed)
    chunks.reset()
    if record:
      frames.append(env.images()[0])
    while steps < max_steps:
      action = chunks.act(lambda: observation_request(env, obs, image_size))
      obs, _, success, _ = env.step(from_common(action))
      steps += 1
      if record:
        frames.append(env.images()[0])
      if success:
        break
  except Exception as exc:  # the protocol: any failure inside an episode is a failed trial, logged
    success = False
    error = f"{type(exc).__name__}: {exc}"
    print(f"trial failed with an exception:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
  result = {"success": bool(success), "steps": steps, "policy_requests": chunks.requests, "error": error,
            "seconds": round(time.perf_counter() - start, 2)}
  return result, frames


def write_video(path: str, frames: list[np.ndarray], fps: int = 20) -> str:
  """MP4 (ffmpeg) or GIF (by the extension of `path`); returns `path`."""
  import imageio  # noqa: PLC0415 -- simulator environment only
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if path.endswith(".gif"):
    imageio.mimwrite(path, frames, duration=1000 / fps, loop=0)
  else:
    imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
  return path


def _init_worker(settings: dict) -> None:
  from openpi_client import websocket_client_policy  # noqa: PLC0415
  client = websocket_client_policy.WebsocketClientPolicy(settings["host"], settings["port"],
                                                         api_key=settings.get("api_key"))
  metadata = client.get_server_metadata()
  size = settings.get("image_size") or metadata.get("image_size")
  layout = metadata.get("layout")
  if layout not in (None, SUITE):
    print(f"warning: the served policy has layout {layout!r}, not {SUITE!r}; its requests may not match",
          file=sys.stderr, flush=True)
  cameras = metadata.get("cameras") or list(CAMERA_KEYS)  # a server without metadata: send both
  _worker.update(client=client, settings=settings, image_size=tuple(size) if size else None, env=None,
                 wrist="wrist" in cameras)


def _run_job(job: tuple[str, int]) -> dict:
  task, trial = job
  settings = _worker["settings"]
  env = _worker["env"]
  if env is None or env.task != task:
    if env is not None:
      env.close()
    env = _worker["env"] = MetaWorldEnv(task, resolution=settings["resolution"], fast_render=settings["fast_render"],
                                        wrist=_worker["wrist"])
  record = trial in settings["video_trials"].get(task, ())
  budget = settings["max_steps"] or max_steps(task)
  chunks = closed_loop.ActionChunks(_worker["client"].infer, settings["replan"])
  result, frames = run_trial(env, chunks, trial, budget, _worker["image_size"], record=record)
  result.update(suite=SUITE, task=task, trial=trial, seed=trial, instruction=str(env.instruction), max_steps=budget,
                video=None)
  if record and frames:
    outcome = "success" if result["success"] else "failure"
    path = os.path.join(settings["out_dir"], "videos", f"{task}_trial{trial:03d}_{outcome}.{settings['video_format']}")
    try:
      result["video"] = os.path.relpath(write_video(path, frames), settings["out_dir"])
    except Exception as exc:  # a missing video must not lose the trial's result
      result["video_error"] = f"{type(exc).__name__}: {exc}"
      print(f"warning: could not write {path}: {result['video_error']}", file=sys.stderr, flush=True)
  return result


def task_table(results: list[dict]) -> str:
  """Markdown: one row per task with its instruction, success rate and mean steps of the successes."""
  rows = ["| task | instruction | success | mean steps (successes) |", "|---|---|---:|---:|"]
  for task, entry in closed_loop.success_by(results, "task").items():
    mine = [r for r in results if r["task"] == task]
    steps = [r["steps"] for r in mine if r["success"]]
    rows.append(f"| {task} | {mine[0]['instruction']} | {entry['successes']}/{entry['trials']} "
                f"({100 * entry['success_rate']:.1f}%) | {np.mean(steps) if steps else float('nan'):.1f} |")
  return "\n".join(rows)


def summarize(results: list[dict], out_dir: str, name: str = "policy") -> dict:
  """Writes summary.json and summary.md (overall + per-task tables, videos); returns the summary."""
  results = sorted(results, key=lambda r: (r["task"], r["trial"]))
  summary = {"suite": SUITE, "trials": len(results), "success_rate": float(np.mean([r["success"] for r in results])),
             "successes": int(sum(r["success"] for r in results)),
             "tasks": closed_loop.success_by(results, "task"),
             "errors": sum(r["error"] is not None for r in results)}
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(f"# Meta-World closed loop: {name}\n\n{closed_loop.suite_table({name: results})}\n\n"
            f"{task_table(results)}\n")
    videos = [r["video"] for r in results if r.get("video")]
    if videos:
      f.write("\nVideos:\n\n" + "\n".join(
          f"![{os.path.basename(v)}]({v})" if v.endswith(".gif") else f"- [{os.path.basename(v)}]({v})"
          for v in videos) + "\n")
  return summary


def evaluate(settings: dict, tasks: list[str], trials: list[int], workers: int) -> dict:
  log = jsonl_log.ResumableLog(os.path.join(settings["out_dir"], RESULTS_FILE), ("suite", "task", "trial"))
  jobs = [(task, k) for task in tasks for k in trials if not log.done((SUITE, task, k))]
  settings = {**settings, "video_trials": {task: trials[:settings["videos_per_task"]] for task in tasks}}
  done_before = len(log.records)
  print(f"{len(jobs)} trials to run ({done_before} already in {log.path}), {workers} workers", flush=True)
  start = time.perf_counter()
  with tqdm.tqdm(total=len(jobs), desc="Meta-World trials", unit="trial") as bar:
    def progress(result, rate):
      bar.set_postfix(success=f"{100 * rate:.1f}%")
      bar.update(1)
      bar.write(f"{result['task']} trial {result['trial']}: {'success' if result['success'] else 'failure'} in "
                f"{result['steps']} steps ({result['seconds']:.0f} s)")

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
  parser.add_argument("--tasks", default="drawer-open-v3", help="comma-separated Meta-World v3 task names, or 'all'")
  parser.add_argument("--trials", default="0-9", help="trial seeds: trial k is the task's fixed variant k")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--resolution", type=int, default=128, help="camera size rendered by the simulator")
  parser.add_argument("--image_size", type=int, nargs=2, default=None,
                      help="resize-with-pad target (H W); default: the policy's, from the server metadata")
  parser.add_argument("--replan", type=int, default=REPLAN)
  parser.add_argument("--max_steps", type=int, default=0, help="0: the task's budget (env.MAX_STEPS)")
  parser.add_argument("--videos_per_task", type=int, default=1)
  parser.add_argument("--video_format", choices=("mp4", "gif"), default="mp4")
  parser.add_argument("--default_render", action="store_true", help="MuJoCo's default (slow) render settings")
  parser.add_argument("--name", default="policy", help="row name in the summary table")
  args = parser.parse_args(argv)
  try:
    tasks, trials = parse_tasks(args.tasks), parse_seeds(args.trials)
  except ValueError as error:
    parser.error(str(error))
  if not 0 <= args.max_steps <= MAX_PATH_LENGTH:
    parser.error(f"--max_steps={args.max_steps}; expected 0 (the task's budget) to {MAX_PATH_LENGTH} (Meta-World's limit)")
  os.makedirs(args.out_dir, exist_ok=True)
  settings = {"host": args.host, "port": args.port, "api_key": args.api_key, "resolution": args.resolution,
              "image_size": args.image_size, "replan": args.replan, "max_steps": args.max_steps,
              "videos_per_task": args.videos_per_task, "video_format": args.video_format,
              "fast_render": not args.default_render, "out_dir": os.path.abspath(args.out_dir), "name": args.name}
  summary = evaluate(settings, tasks, trials, args.workers)
  print(open(os.path.join(args.out_dir, "summary.md")).read())
  print(json.dumps({k: summary[k] for k in ("trials", "success_rate", "errors", "wall_seconds")}))


if __name__ == "__main__":
  main()
