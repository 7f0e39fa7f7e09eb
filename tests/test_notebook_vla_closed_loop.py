"""notebooks/vla_closed_loop.ipynb at its default (toy) sizes: Meta-World expert demonstrations ->
a tiny Stage 3 head -> the exported policy in process and served over the openpi protocol -> the
real Meta-World harness in closed loop. Builds the simulator environment first (`make
sim-metaworld`, idempotent), as tests/test_metaworld_sim.py does."""

import os

import pytest

import notebook_runner
import sim_envs
from roboalign_jax.eval.metaworld import env as mw_env

pytestmark = pytest.mark.slow


def test_vla_closed_loop_notebook_records_trains_serves_and_evaluates(tmp_path):
  sim_envs.make_sim_env("metaworld")
  summary, seconds = notebook_runner.run_notebook("vla_closed_loop", parameters={"WORKDIR": str(tmp_path)})
  print(f"vla_closed_loop.ipynb: {seconds:.1f} s")

  # The expert succeeds on every default variant (0-2), so all three were written.
  assert (summary["expert_success"], summary["episodes_recorded"]) == (1.0, 3), summary
  assert summary["demo_steps"] > 3 * 40, summary
  # The head trained every step and its loss fell.
  assert summary["head_steps"] == 60 and summary["loss_points"] >= 10, summary
  assert summary["last_loss"] < 0.8 * summary["first_loss"], summary
  # In process: one chunk of the policy's horizon in the common 7-D layout, finite.
  assert summary["infer_shape"] == [16, 7] and summary["infer_finite"], summary
  assert summary["policy_metadata"]["layout"] == "metaworld" and summary["policy_metadata"]["cameras"] == ["primary"]
  # Closed loop: both trials ran to success or their whole budget, one request per 5 steps, no error.
  trials = summary["trials"]
  assert [t["trial"] for t in trials] == [0, 1], trials
  for t in trials:
    assert t["error"] is None and t["success"] in (True, False), t
    assert t["success"] or t["steps"] == t["max_steps"] == mw_env.max_steps(summary["task"]), t
    assert t["policy_requests"] == -(-t["steps"] // 5), t
  assert summary["success_rate"] == sum(t["success"] for t in trials) / 2
  # The first trial's GIF: a frame per executed step and the reset (a GIF merges identical consecutive frames).
  assert summary["video"].endswith(".gif") and os.path.getsize(summary["video"]) > 0
  assert 1 < summary["video_frames"] <= trials[0]["steps"] + 1, summary
