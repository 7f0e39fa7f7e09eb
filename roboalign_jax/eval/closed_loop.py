"""What every closed-loop harness shares: index lists, executing a policy's action chunks with
re-planning, and the success tables (the resumable trial log is eval/jsonl_log.py).

Simulator side: imports only the standard library and NumPy, so it runs in a simulator's own
environment (LIBERO, Meta-World, CALVIN) next to the openpi client.
"""

from __future__ import annotations

import collections
import multiprocessing
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

# The paper's Table 2 columns for LIBERO.
SUITE_COLUMNS = {"libero_spatial": "Spatial", "libero_object": "Object", "libero_goal": "Goal", "libero_10": "Long"}


def index_list(text: str, limit: int) -> list[int]:
  """"all" | "0,3,5" | "0-4" | "0-2,7" -> sorted indices, each in [0, limit)."""
  if text == "all":
    return list(range(limit))
  out = set()
  for part in text.split(","):
    part = part.strip()
    try:
      lo, _, hi = part.partition("-")
      out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
      raise ValueError(f"index list {text!r}: {part!r} is not N or N-M; expected e.g. 'all', '0,1' or '0-4'") from None
  bad = [i for i in out if not 0 <= i < limit]
  if bad:
    raise ValueError(f"index list {text!r} has {bad} outside 0..{limit - 1}")
  return sorted(out)


class ActionChunks:
  """Asks `infer(request) -> {"actions": [H, D]}` for a chunk and executes its first `replan`
  actions before asking again (openpi's LIBERO client replans every 5)."""

  def __init__(self, infer: Callable[[dict], Mapping[str, Any]], replan: int):
    if replan < 1:
      raise ValueError(f"replan={replan}; expected at least 1 action per chunk")
    self.infer, self.replan = infer, replan
    self.plan: collections.deque = collections.deque()
    self.requests = 0

  def reset(self) -> None:
    self.plan.clear()

  def act(self, request: Callable[[], dict]) -> np.ndarray:
    """The next action; `request()` builds the observation only when a new chunk is needed."""
    if not self.plan:
      actions = np.asarray(self.infer(request())["actions"])
      if actions.ndim != 2 or len(actions) == 0:
        raise ValueError(f"policy returned actions of shape {actions.shape}; expected a chunk [H, D] with H >= 1")
      self.plan.extend(actions[: self.replan])
      self.requests += 1
    return self.plan.popleft()


def success_by(results: Iterable[Mapping[str, Any]], field: str) -> dict[Any, dict[str, float]]:
  """{value of `field`: {"successes", "trials", "success_rate"}} in first-seen order."""
  counts: dict[Any, list[int]] = {}
  for r in results:
    entry = counts.setdefault(r[field], [0, 0])
    entry[0] += bool(r["success"])
    entry[1] += 1
  return {k: {"successes": s, "trials": n, "success_rate": s / n} for k, (s, n) in counts.items()}


def task_table(results: Sequence[Mapping[str, Any]]) -> str:
  """Markdown: one row per (suite, task) with its instruction and success rate."""
  rows = ["| suite | task | instruction | success |", "|---|---:|---|---:|"]
  tasks: dict[tuple, list] = {}
  for r in results:
    tasks.setdefault((r["suite"], r["task_id"], r["instruction"]), []).append(bool(r["success"]))
  order = list(SUITE_COLUMNS)
  for (suite, task_id, instruction), outcomes in sorted(
      tasks.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order else len(order), kv[0][:2])):
    rows.append(f"| {suite} | {task_id} | {instruction} | {sum(outcomes)}/{len(outcomes)} "
                f"({100 * np.mean(outcomes):.1f}%) |")
  return "\n".join(rows)


def suite_table(rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
  """Markdown in the paper's Table 2 shape: one row per policy (name -> its trial results), one
  column per suite present (success %, mean over trials) and their average."""
  suites = [s for s in SUITE_COLUMNS if any(r["suite"] == s for results in rows.values() for r in results)]
  suites += sorted({r["suite"] for results in rows.values() for r in results} - set(suites))
  header = "| policy | " + " | ".join(SUITE_COLUMNS.get(s, s) for s in suites) + " | Avg |"
  lines = [header, "|---|" + "---:|" * (len(suites) + 1)]
  for name, results in rows.items():
    by_suite = success_by(results, "suite")
    rates = [100 * by_suite[s]["success_rate"] if s in by_suite else None for s in suites]
    present = [r for r in rates if r is not None]
    cells = ["–" if r is None else f"{r:.1f}" for r in rates]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(present):.1f} |")
  return "\n".join(lines)


def run_jobs(jobs: Sequence[Any], log: Any, *, workers: int, initializer: Callable, initargs: tuple,
             run_job: Callable[[Any], dict], progress: Callable[[dict, float], None]) -> None:
  """Runs the trials `jobs` on `workers` spawned processes (each its own MuJoCo/EGL state: a
  simulator is not fork-safe), appending each result to the resumable `log` as it arrives;
  `progress(result, success rate of this run so far)` reports it."""
  if not jobs:
    return
  done_before = len(log.records)
  context = multiprocessing.get_context("spawn")
  with context.Pool(min(workers, len(jobs)), initializer=initializer, initargs=initargs) as pool:
    for result in pool.imap_unordered(run_job, jobs):
      log.append(result)
      progress(result, float(np.mean([r["success"] for r in log.records[done_before:]])))
