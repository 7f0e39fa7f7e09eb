"""The closed-loop harnesses' shared parts: chunk execution with re-planning, the resumable JSONL
log (a torn last line from a killed run is dropped) and the success tables."""

import json

import numpy as np
import pytest

from roboalign_jax.eval import closed_loop, jsonl_log


def test_chunks_replan_every_k_actions():
  calls = []

  def infer(request):
    calls.append(request)
    base = 10 * len(calls)
    return {"actions": np.arange(base, base + 8, dtype=np.float32)[:, None].repeat(7, axis=1)}

  chunks = closed_loop.ActionChunks(infer, replan=3)
  built = []
  actions = [chunks.act(lambda: built.append(1) or {"n": len(built)})[0] for _ in range(7)]
  assert actions == [10, 11, 12, 20, 21, 22, 30] and chunks.requests == 3 and len(built) == 3
  chunks.reset()
  assert chunks.act(lambda: {})[0] == 40  # a reset drops the rest of the plan
  with pytest.raises(ValueError, match="replan=0"):
    closed_loop.ActionChunks(infer, replan=0)
  empty = closed_loop.ActionChunks(lambda r: {"actions": np.zeros((0, 7))}, replan=5)
  with pytest.raises(ValueError, match=r"actions of shape \(0, 7\); expected a chunk"):
    empty.act(lambda: {})


def test_resumable_log_skips_done_items_and_drops_a_torn_line(tmp_path):
  path = str(tmp_path / "results.jsonl")
  log = jsonl_log.ResumableLog(path, ("suite", "task_id", "trial"))
  log.append({"suite": "s", "task_id": 0, "trial": 0, "success": True})
  log.append({"suite": "s", "task_id": 0, "trial": 1, "success": False})
  with open(path, "a") as f:
    f.write('{"suite": "s", "task_id": 0, "tri')  # killed mid-write
  resumed = jsonl_log.ResumableLog(path, ("suite", "task_id", "trial"))
  assert len(resumed) == 2 and resumed.done(("s", 0, 1)) and not resumed.done(("s", 0, 2))
  assert resumed.get(("s", 0, 1))["success"] is False
  assert open(path).read().count("\n") == 2  # the torn tail is gone
  resumed.append({"suite": "s", "task_id": 0, "trial": 2, "success": True})
  assert [json.loads(line)["trial"] for line in open(path)] == [0, 1, 2]
  with pytest.raises(KeyError):
    resumed.append({"suite": "s", "trial": 3})  # no key field: nothing is written
  assert len(open(path).read().splitlines()) == 3
  with open(path, "w") as f:
    f.write('not json\n{"suite": "s", "task_id": 0, "trial": 0, "success": true}\n')
  with pytest.raises(ValueError, match=r"results.jsonl line 1 is malformed"):
    jsonl_log.ResumableLog(path, ("suite", "task_id", "trial"))
  with open(path, "w") as f:
    f.write('{"suite": "s", "task_id": 0}\n')  # a complete line without a key field is not a torn tail
  with pytest.raises(ValueError, match=r"line 1 is malformed \(KeyError"):
    jsonl_log.ResumableLog(path, ("suite", "task_id", "trial"))


def test_tables_hand_worked():
  results = ([{"suite": "libero_spatial", "task_id": 0, "instruction": "a", "success": s} for s in (1, 1, 0, 1)] +
             [{"suite": "libero_object", "task_id": 3, "instruction": "b", "success": s} for s in (0, 1)])
  by_suite = closed_loop.success_by(results, "suite")
  assert by_suite["libero_spatial"] == {"successes": 3, "trials": 4, "success_rate": 0.75}
  table = closed_loop.suite_table({"sft": results, "base": results[:4]}).splitlines()
  assert table[0] == "| policy | Spatial | Object | Avg |"
  assert table[2] == "| sft | 75.0 | 50.0 | 62.5 |" and table[3] == "| base | 75.0 | – | 75.0 |"
  tasks = closed_loop.task_table(results).splitlines()
  assert tasks[2] == "| libero_spatial | 0 | a | 3/4 (75.0%) |" and tasks[3] == "| libero_object | 3 | b | 1/2 (50.0%) |"


def test_index_lists():
  assert closed_loop.index_list("all", 3) == [0, 1, 2]
  assert closed_loop.index_list("5,0-2,1", 10) == [0, 1, 2, 5]
  with pytest.raises(ValueError, match=r"index list '49-50' has \[50\] outside 0..49"):
    closed_loop.index_list("49-50", 50)
  with pytest.raises(ValueError, match="'x' is not N or N-M"):
    closed_loop.index_list("x", 3)
