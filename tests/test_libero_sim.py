"""LIBERO on the real simulator: quaternion -> axis-angle (main environment, fast) and, in the
simulator's own environment, the scripted expert recording episodes that the data pipeline reads.

The slow test builds the simulator environment itself with `make sim-libero` (idempotent: a stamp
file, so only the first run on a machine downloads ~740 MB and takes ~1.5 min), then runs
`launch/record_libero.py` as a user would. Nothing here mocks the simulator.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sim_envs
from configs_loader import REPO_ROOT
from roboalign_jax.eval.libero.rotations import matrix_to_axis_angle, quat_to_axis_angle, quat_to_matrix

SIM_PYTHON = sim_envs.sim_python("libero")


# --- quaternion (xyzw) -> axis-angle, hand-worked --------------------------------------------------
S45 = np.sqrt(0.5)


@pytest.mark.parametrize("quat, expected", [
    ((0, 0, 0, 1), (0, 0, 0)),                                     # identity
    ((0, 0, S45, S45), (0, 0, np.pi / 2)),                          # +90 deg about z
    ((0, 0, -S45, -S45), (0, 0, np.pi / 2)),                        # the same rotation as -q
    ((S45, 0, 0, -S45), (-np.pi / 2, 0, 0)),                        # -q of -90 deg about x
    ((1, 0, 0, 0), (np.pi, 0, 0)),                                  # 180 deg about x (w = 0)
    ((0.5, 0.5, 0.5, 0.5), (2 * np.pi / 3 / np.sqrt(3),) * 3),      # 120 deg about (1,1,1)/sqrt(3)
    ((0, 2 * np.sin(0.05), 0, 2 * np.cos(0.05)), (0, 0.1, 0)),      # not unit: normalised first
    ((1e-9, 0, 0, 1), (2e-9, 0, 0)),                                # small-angle limit
])
def test_quat_to_axis_angle_hand_worked(quat, expected):
  np.testing.assert_allclose(quat_to_axis_angle(np.array(quat, float)), expected, atol=1e-12)


def test_quat_to_axis_angle_batched_and_matrix_agree():
  rng = np.random.default_rng(0)
  quats = rng.normal(size=(16, 4))
  batched = quat_to_axis_angle(quats)
  for q, v in zip(quats, batched):
    np.testing.assert_allclose(quat_to_axis_angle(q), v, atol=1e-12)
    np.testing.assert_allclose(matrix_to_axis_angle(quat_to_matrix(q)), v, atol=1e-9)
    assert np.linalg.norm(v) <= np.pi + 1e-12


def test_quat_to_axis_angle_names_bad_input():
  with pytest.raises(ValueError, match=r"shape \(3,\); expected \[\.\.\., 4\]"):
    quat_to_axis_angle([0, 0, 1])
  with pytest.raises(ValueError, match="zero norm"):
    quat_to_axis_angle([0, 0, 0, 0])


def test_noop_steps_are_dropped_like_openvla():
  from roboalign_jax.eval.libero.record import keep_mask
  actions = np.array([[0, 0, 0, 0, 0, 0, -1],      # first step, still: no-op
                      [0, 0, 0, 0, 0, 0, -1],      # still: no-op
                      [0.5, 0, 0, 0, 0, 0, -1],    # moves
                      [0, 0, 0, 0, 0, 5e-5, -1],   # below 1e-4, gripper unchanged: no-op
                      [0, 0, 0, 0, 0, 0, 1],       # still, but the gripper closes: kept
                      [0, 0, 0, 0, 0, 0, 1]],      # still, gripper unchanged: no-op
                     np.float32)
  np.testing.assert_array_equal(keep_mask(actions), [False, False, True, False, True, False])


# --- the real simulator -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
  """Two expert episodes of LIBERO-Spatial task 0 (init states 0 and 1), recorded as a user would."""
  sim_envs.make_sim_env("libero")
  out_dir = tmp_path_factory.mktemp("libero") / "rlds"
  command = [sys.executable, os.path.join(REPO_ROOT, "launch", "record_libero.py"), "--suite=libero_spatial",
             "--tasks=0", "--init_states=0,1", f"--out_dir={out_dir}"]
  result = subprocess.run(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
  return out_dir


@pytest.mark.slow
def test_expert_records_episodes_the_pipeline_reads(recorded, tmp_path):
  # The simulator environment has no JAX and cannot import the training package's dependencies.
  probe = subprocess.run([SIM_PYTHON, "-c", "import importlib.util as u; print([m for m in ('jax', 'flax', "
                          "'tensorflow', 'grain') if u.find_spec(m)])"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=120)
  assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr

  out_dir = recorded
  report = json.loads((out_dir / "libero_spatial_no_noops_recording.json").read_text())
  assert report["episodes_written"] == 2 and report["failed_episodes"] == 0, report
  path = str(out_dir / "libero_spatial_no_noops" / "1.0.0")
  assert report["dataset"] == path

  from roboalign_jax import data
  from roboalign_jax.data import convert
  from roboalign_jax.data.rlds_source import RLDSSource
  from roboalign_jax.data.specs import get_spec
  validation = convert.validate(path, "libero", progress=False)
  assert validation["episodes"] == validation["usable_episodes"] == 2 and not validation["skipped"], validation
  for camera in ("primary", "wrist"):
    assert [f[:2] for f in validation["cameras"][camera]["frames"]] == [[256, 256]], validation["cameras"]

  # The raw episode: the published layout, OpenVLA's conventions.
  source = RLDSSource(path, get_spec("libero"))
  raw = source.raw_episode(0)
  actions, states = raw.fields["action"], raw.fields["observation/state"]
  assert actions.shape[1] == 7 and states.shape == (len(actions), 8)
  assert raw.fields["observation/joint_state"].shape == (len(actions), 7)
  assert np.abs(actions).max() <= 1.0
  assert set(np.unique(actions[:, 6])) == {-1.0, 1.0}  # opens, closes, opens
  assert not ((np.linalg.norm(actions[:, :6], axis=1) < 1e-4) & (np.diff(actions[:, 6], prepend=np.nan) == 0)).any()
  assert 0.0 < states[0, 6] < 0.05 and -0.05 < states[0, 7] < 0.0  # gripper finger qpos, open
  assert np.linalg.norm(states[0, 3:6]) > 2.5  # the hand points down: ~pi about a horizontal axis
  assert "black bowl" in raw.fields["language_instruction"][0].decode()

  config = data.data_config(datasets=[data.dataset_entry("libero", path)], cache_dir=str(tmp_path / "cache"),
                            global_batch_size=4, progress=False, action_horizon=8, image_size=(224, 224))
  batch = next(iter(data.make_dataset(config, process_index=0, process_count=1)))
  assert batch["images"].shape == (4, 2, 1, 224, 224, 3) and batch["images"].dtype == np.uint8
  assert batch["state"].shape == (4, 1, 8) and batch["actions"].shape == (4, 8, 7)
  gripper = batch["actions"][..., 6][batch["action_mask"]]
  assert set(np.unique(gripper)) <= {-1.0, 1.0}


@pytest.mark.slow
def test_tiny_vla_on_the_expert_demos_is_served_and_evaluated_in_closed_loop(recorded, tmp_path):
  """Recorded demos -> Stage 3 (launch/train.py) -> policy served over the openpi protocol ->
  the LIBERO harness on the real simulator (launch/eval_libero.py), for one task and init state."""
  import launch_helpers
  import tiny_qwen
  data_dir = recorded / "libero_spatial_no_noops" / "1.0.0"
  config = (f"configs/vla.py:tiny,backbone={tiny_qwen.checkpoint_dir(112 * 112)},data={data_dir},steps=20")
  proc = launch_helpers.run(config, str(tmp_path / "vla"), f"--config.data.cache_dir={tmp_path / 'cache'}",
                            "--config.data.progress=False", timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  policy_dir = json.loads(proc.stdout.strip().splitlines()[-1])["policy_dir"]

  out_dir = tmp_path / "eval"
  command = [sys.executable, os.path.join(REPO_ROOT, "launch", "eval_libero.py"), f"--policy_dir={policy_dir}",
             f"--out_dir={out_dir}", "--suite=libero_spatial", "--tasks=0", "--trials=0", "--workers=1", "--",
             "--max_steps=20", "--soft_reset"]
  result = subprocess.run(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
  [trial] = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
  assert (trial["suite"], trial["task_id"], trial["trial"], trial["error"]) == ("libero_spatial", 0, 0, None), trial
  # 10 settling no-ops, then 20 policy steps in chunks of 5 (unless the untrained policy succeeds).
  assert trial["success"] or (trial["steps"], trial["policy_requests"]) == (30, 4), trial
  assert (out_dir / trial["video"]).stat().st_size > 0
  summary = json.loads((out_dir / "summary.json").read_text())
  assert summary["trials"] == 1 and summary["suites"]["libero_spatial"]["trials"] == 1
  report = (out_dir / "summary.md").read_text()
  assert "| policy | Spatial | Avg |" in report and f"]({trial['video']})" in report
  # A rerun finds the trial done and only rewrites the summary.
  again = subprocess.run(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=900)
  assert again.returncode == 0 and "0 trials to run (1 already in" in again.stdout, again.stdout[-3000:]
