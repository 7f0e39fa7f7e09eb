"""Meta-World on the real simulator: the `metaworld` layout's standardisation (main environment,
fast) and, in the simulator's own environment, the env wrapper's variants and success signal, the
scripted experts recording episodes that the data pipeline reads, and a tiny Stage 3 policy
served and evaluated in closed loop.

The slow tests build the simulator environment themselves with `make sim-metaworld` (idempotent:
a stamp file, so only the first run on a machine installs it, ~25 s from the local wheel cache),
then run `launch/record_metaworld.py` and `launch/eval_metaworld.py` as a user would. Nothing
here mocks the simulator.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sim_envs
from configs_loader import REPO_ROOT
from roboalign_jax.data.errors import DataError
from roboalign_jax.data.specs import get_spec
from roboalign_jax.data.specs.common import RawEpisode
from roboalign_jax.eval.metaworld import env as mw_env

SIM_PYTHON = sim_envs.sim_python("metaworld")
TASK = "drawer-open-v3"
EFFORTS = [-1.0, 0.0, 0.1, 0.6, 0.8, 1.0]  # what Meta-World's scripted experts emit
SNAPPED = [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]


# --- the layout, in the main environment -----------------------------------------------------------
def _raw(actions, states=None):
  n = len(actions)
  states = np.zeros((n, 4), np.float32) if states is None else states
  return RawEpisode(dataset="metaworld_scripted", index=0,
                    fields={"action": np.asarray(actions, np.float32), "observation/state": states,
                            "language_instruction": np.array([b"open the drawer"] * n, dtype=object)},
                    images={"observation/image": [b"jpeg"] * n, "observation/wrist_image": [b"jpeg"] * n},
                    metadata={})


def test_spec_maps_4d_actions_into_the_common_layout_and_snaps_the_gripper():
  spec = get_spec("metaworld")
  actions = np.array([[0.1 * i, -0.2, 0.3, g] for i, g in enumerate(EFFORTS)], np.float32)
  states = np.arange(len(EFFORTS) * 4, dtype=np.float32).reshape(-1, 4)
  episode = spec.standardize(_raw(actions, states))
  assert episode.actions.shape == (len(EFFORTS), 7) and episode.actions.dtype == np.float32
  np.testing.assert_array_equal(episode.actions[:, :3], actions[:, :3])
  np.testing.assert_array_equal(episode.actions[:, 3:6], 0.0)       # no rotation in Meta-World
  np.testing.assert_array_equal(episode.actions[:, 6], SNAPPED)     # > 0 closes, 0 ("not grasping") opens
  np.testing.assert_array_equal(episode.states, states)
  assert episode.instruction == "open the drawer" and set(episode.images) == {"primary", "wrist"}
  assert spec.state_dim == 4 and set(spec.cameras) == {"primary", "wrist"}
  # The simulator side snaps the executed action by the same rule, and maps 7-D back with [0, 1, 2, 6].
  np.testing.assert_array_equal(mw_env.snap_gripper(EFFORTS), SNAPPED)
  np.testing.assert_array_equal(mw_env.executed_action([2.0, -3.0, 0.5, 0.1]), [1.0, -1.0, 0.5, 1.0])
  np.testing.assert_allclose(mw_env.from_common(episode.actions[1]), [0.1, -0.2, 0.3, -1.0], rtol=1e-6)


def test_spec_refuses_actions_of_another_width():
  with pytest.raises(DataError, match=r"action is \(7,\) per step; expected \(4,\)"):
    get_spec("metaworld").standardize(_raw(np.zeros((3, 7), np.float32)))
  with pytest.raises(ValueError, match=r"expected \[7\] in the common layout"):
    mw_env.from_common(np.zeros(4))
  with pytest.raises(ValueError, match="expected 4 finite values"):
    mw_env.executed_action([0, 0, np.nan, 1])


def test_always_zero_rotation_dims_normalise_and_come_back_as_zero():
  from roboalign_jax.data import normalization, transforms
  spec = get_spec("metaworld")
  rng = np.random.default_rng(0)
  raw = np.concatenate([rng.uniform(-1, 1, (200, 3)), rng.choice(EFFORTS, (200, 1))], axis=1)
  actions = spec.standardize(_raw(raw)).actions
  stats = normalization.DatasetStatistics(normalization.Stats.of(actions),
                                          normalization.Stats.of(rng.normal(size=(200, 4))), 200, 1)
  layout = transforms.layout_transforms(spec, stats, image_size=(32, 32), cameras=("primary",), state_width=64)
  normalised = layout.actions({"actions": actions})["actions"]
  assert np.isfinite(normalised).all() and np.abs(normalised).max() <= 1.0
  np.testing.assert_array_equal(normalised[:, 3:6], 0.0)
  model_output = rng.uniform(-1.5, 1.5, (16, 32)).astype(np.float32)  # padded, unclipped model output
  out = layout.outputs({"actions": model_output})["actions"]
  assert out.shape == (16, 7) and np.isfinite(out).all()
  np.testing.assert_array_equal(out[:, 3:6], 0.0)
  assert set(np.unique(out[:, 6])) <= {-1.0, 1.0}
  assert layout.request.cameras == (("observation/image", "primary"),) and layout.request.state_width == 4


def test_task_and_seed_lists_and_the_upright_corner_camera():
  assert mw_env.parse_seeds("0-2,7") == [0, 1, 2, 7] and mw_env.parse_tasks("reach-v3,reach-v3") == ["reach-v3"]
  assert len(mw_env.parse_tasks("all")) == 50 and all(mw_env.max_steps(t) <= mw_env.MAX_PATH_LENGTH
                                                        for t in mw_env.TASKS)
  with pytest.raises(ValueError, match="unknown"):
    mw_env.parse_tasks("reach-v2")
  with pytest.raises(ValueError, match="no 'all'|not N or N-M"):
    mw_env.parse_seeds("all")
  frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  np.testing.assert_array_equal(mw_env.to_dataset_orientation(frame), np.rot90(frame, 2))


# --- the real simulator -------------------------------------------------------------------------
def _in_simulator(code: str, timeout: float = 300) -> dict:
  """Runs `code` in the simulator environment; it prints one JSON object last, which is returned."""
  result = subprocess.run([SIM_PYTHON, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT, "MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"})
  assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sim_env():
  sim_envs.make_sim_env("metaworld")


@pytest.mark.slow
def test_env_variants_are_fixed_and_success_comes_from_the_env(sim_env):
  out = _in_simulator(f"""
      import json
      import numpy as np
      from roboalign_jax.eval.metaworld.env import MetaWorldEnv, NOOP_ACTION
      from roboalign_jax.eval.metaworld.expert import rollout
      from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
      env, other = MetaWorldEnv("{TASK}", resolution=64), MetaWorldEnv("{TASK}", render=False)
      expert = rollout(env, 3)
      idle_obs = env.reset(3)
      idle = [env.step(NOOP_ACTION)[2] for _ in range(60)]
      reference = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE["{TASK}-goal-observable"](seed=3)
      same = np.array_equal(other.reset(3), idle_obs) and np.array_equal(other.variant, env.variant)
      variant3 = env.variant
      env.reset(4)
      corner, wrist = env.images()
      print(json.dumps({{"expert": expert, "idle": idle, "same": bool(same),
                        "as_metaworld": bool(np.array_equal(reference._last_rand_vec, variant3)),
                        "differs": bool(not np.array_equal(env.variant, variant3)),
                        "images": [list(corner.shape), str(corner.dtype), list(wrist.shape)]}}))
  """)
  expert = out["expert"]
  assert expert["success"] and expert["steps"] < 2 * mw_env.max_steps(TASK) and "error" not in expert, expert
  assert expert["gripper_efforts"] == [-1.0]  # drawer-open keeps the hand open
  assert not any(out["idle"]), "a do-nothing policy must not succeed"
  assert out["same"] and out["as_metaworld"] and out["differs"], out
  assert out["images"] == [[64, 64, 3], "uint8", [64, 64, 3]]


@pytest.fixture(scope="module")
def recorded(sim_env, tmp_path_factory):
  """Two expert episodes of drawer-open (variants 0 and 1), recorded as a user would."""
  out_dir = tmp_path_factory.mktemp("metaworld") / "rlds"
  command = [sys.executable, os.path.join(REPO_ROOT, "launch", "record_metaworld.py"), f"--tasks={TASK}",
             "--trials=0,1", f"--out_dir={out_dir}"]
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

  report = json.loads((recorded / "metaworld_recording.json").read_text())
  assert report["episodes_written"] == 2 and report["failed_episodes"] == 0, report
  assert report["expert_success"] == {TASK: 1.0} and report["expert_success_overall"] == 1.0
  path = str(recorded / "metaworld_scripted" / "1.0.0")
  assert report["dataset"] == path

  from roboalign_jax import data
  from roboalign_jax.data import convert
  from roboalign_jax.data.rlds_source import RLDSSource
  validation = convert.validate(path, "metaworld", progress=False)
  assert validation["episodes"] == validation["usable_episodes"] == 2 and not validation["skipped"], validation
  for camera in ("primary", "wrist"):
    assert [f[:2] for f in validation["cameras"][camera]["frames"]] == [[128, 128]], validation["cameras"]

  source = RLDSSource(path, get_spec("metaworld"))
  raw = source.raw_episode(1)
  actions, states = raw.fields["action"], raw.fields["observation/state"]
  assert actions.shape == (len(states), 4) and states.shape[1] == 4
  assert len(actions) + len(source.raw_episode(0).fields["action"]) == report["steps"] == validation["steps"]
  assert raw.fields["observation/env_state"].shape == (len(actions), 39)
  np.testing.assert_array_equal(states, raw.fields["observation/env_state"][:, :4])
  assert np.abs(actions).max() <= 1.0 and set(np.unique(actions[:, 3])) == {-1.0}
  assert raw.metadata["task"] == TASK.encode() and raw.metadata["seed"] == 1
  assert raw.fields["language_instruction"][0].decode() == mw_env.INSTRUCTIONS[TASK]

  config = data.data_config(datasets=[data.dataset_entry("metaworld", path)], cache_dir=str(tmp_path / "cache"),
                            global_batch_size=4, progress=False, action_horizon=8, image_size=(112, 112))
  batch = next(iter(data.make_dataset(config, process_index=0, process_count=1)))
  assert batch["images"].shape == (4, 2, 1, 112, 112, 3) and batch["images"].dtype == np.uint8
  assert batch["state"].shape == (4, 1, 4) and batch["actions"].shape == (4, 8, 7)
  assert np.isfinite(batch["actions"]).all()
  np.testing.assert_array_equal(batch["actions"][..., 3:6], 0.0)
  assert set(np.unique(batch["actions"][..., 6][batch["action_mask"]])) <= {-1.0, 1.0}


@pytest.mark.slow
def test_recorded_actions_replayed_through_the_harness_succeed_at_the_same_step(recorded):
  """The recorded action is the executed one and variants are fixed across processes: replaying an
  episode's actions (as 7-D common chunks of 8, re-planned every 5, like a policy's) through the
  harness's trial loop in a fresh simulator process succeeds exactly where the expert did."""
  episodes = recorded / "metaworld_episodes"
  out = _in_simulator(f"""
      import json
      import numpy as np
      from roboalign_jax.eval import closed_loop
      from roboalign_jax.eval.metaworld import evaluate
      from roboalign_jax.eval.metaworld.env import MetaWorldEnv
      results = []
      env = MetaWorldEnv("{TASK}", resolution=64, wrist=False)
      for seed in (0, 1):
        with np.load("{episodes}/{TASK}_seed%03d.npz" % seed) as f:
          recorded = f["action"]
        common = np.zeros((len(recorded) + 8, 7), np.float32)
        common[:len(recorded), [0, 1, 2, 6]] = recorded
        requests = []
        def infer(request):
          t = 5 * len(requests)
          requests.append(request)
          return {{"actions": common[t:t + 8]}}
        result, frames = evaluate.run_trial(env, closed_loop.ActionChunks(infer, 5), seed, 300, None, record=True)
        result.update(recorded_steps=len(recorded), frames=len(frames),
                      request=sorted(requests[0]), state=np.asarray(requests[0]["observation/state"]).tolist())
        results.append(result)
      print(json.dumps(results))
  """)
  for seed, result in enumerate(out):
    assert result["success"] and result["error"] is None, (seed, result)
    assert result["steps"] == result["recorded_steps"] and result["frames"] == result["steps"] + 1, result
    assert result["policy_requests"] == -(-result["steps"] // 5), result
    assert result["request"] == ["observation/image", "observation/state", "prompt"], result  # no wrist: not read
    assert len(result["state"]) == 4


@pytest.mark.slow
def test_demo_vla_stage_records_trains_serves_and_evaluates_in_closed_loop(sim_env, tmp_path, monkeypatch):
  """`make demo`'s vla stage at toy size: expert demos -> Stage 3 on the (random tiny) backbone ->
  policy served over the openpi protocol -> the Meta-World harness (launch/eval_metaworld.py) ->
  per-trial success from the env in results.jsonl, the metrics and report built from it; then the
  probe stage on the same demonstrations."""
  from roboalign_jax.demo import probe_stage, vla_stage
  for name, value in (("TASKS", (TASK,)), ("PROBE_TASK", TASK), ("TRAIN_SEEDS", "0-3"), ("HELDOUT_SEEDS", "100"),
                      ("EVAL_SEEDS", "0-1"), ("HEAD_STEPS", 20), ("EVAL_MAX_STEPS", 10)):
    monkeypatch.setattr(vla_stage, name, value)
  monkeypatch.setattr(probe_stage, "CONFIG", dataclasses.replace(
      probe_stage.CONFIG, num_trajectories=4, test_trajectories=1, num_classes=4, test_per_class=2))
  workdir = tmp_path / "demo"
  context = {"workdir": str(workdir)}
  metrics, (_, text, videos) = vla_stage.run(context)

  assert (metrics["metaworld.expert_success"], metrics["metaworld.train_episodes"]) == (1.0, 4), metrics
  assert list(context["backbone_dirs"]) == ["base"]  # run alone: a random tiny backbone
  eval_dir = workdir / "vla" / "eval_base"
  trials = sorted((json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines()),
                  key=lambda r: r["trial"])
  assert [(t["suite"], t["task"], t["trial"], t["seed"], t["error"]) for t in trials] == [
      ("metaworld", TASK, k, k, None) for k in (0, 1)], trials
  for trial in trials:
    # 10 policy steps in chunks of 5: a 20-step head cannot open the drawer (the expert needs ~88 steps).
    assert trial["success"] is False and trial["max_steps"] == 10, trial
    assert (trial["steps"], trial["policy_requests"]) == (10, 2), trial
  rate = float(np.mean([t["success"] for t in trials]))
  assert metrics["vla.base.success"] == metrics[f"vla.base.success.{TASK}"] == rate
  assert np.isfinite(metrics["vla.base.action_mse"]) and metrics["vla.base.action_mse"] > 0
  assert metrics["vla.best"] == "base" and f"| base (best) | {100 * rate:.0f} |" in text
  policy = json.loads((workdir / "policy" / "policy.json").read_text())
  assert policy["layout"] == "metaworld" and policy["cameras"] == ["primary"]
  assert sorted(os.listdir(workdir / "policy")) == ["backbone", "head", "policy.json", "processor"]  # self-contained
  # One GIF of the first trial, linked from the report.
  assert videos == [os.path.relpath(eval_dir / trials[0]["video"], workdir)] and videos[0].endswith(".gif")
  assert (workdir / videos[0]).stat().st_size > 0 and trials[1]["video"] is None
  assert json.loads((eval_dir / "summary.json").read_text())["tasks"] == {
      TASK: {"successes": int(rate * 2), "trials": 2, "success_rate": rate}}

  probe_metrics, (_, probe_text, _) = probe_stage.run(context)
  assert 0.0 <= probe_metrics["probe.base.knn_accuracy"] <= 1.0 and probe_metrics["probe.num_test"] > 0
  assert "Meta-World expert demonstrations of \"open the drawer\"" in probe_text
