"""Demo stage `vla`: Stage 3 on the real Meta-World simulator, for each backbone the earlier stages
produced -- the paper's base vs SFT vs SFT+RL comparison in closed loop (its Table 2 shape).

  1. The scripted experts record demonstrations of TASKS (one variant per seed) as RLDS in the
     `metaworld` layout: training seeds and held-out seeds (launch/record_metaworld.py, in the
     simulator's own environment .venv-metaworld, built by `make sim-metaworld`).
  2. A tiny Stage 3 head (configs/vla.py:tiny) is trained on each frozen backbone's features:
     "base" (the SFT run's random starting model), "sft" (Stage 1's export) and "grpo" (Stage 2's).
  3. Each policy is served over the openpi protocol (launch/serve.py) and evaluated in closed loop
     on the simulator (launch/eval_metaworld.py); success comes from the env's `info["success"]`.
  4. The best policy is copied to `<workdir>/policy` (servable with launch/serve.py).

Uses from the context: `sft_config` (its random init is "base"), `sft_hf_dir`, `grpo_hf_dir`.
Puts into it: `metaworld` (datasets, tasks, instruction of the probe task) and `backbone_dirs`
(name -> HF directory), which the probe stage reads. Run alone it uses a random tiny backbone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any, Sequence

import jax

from roboalign_jax.config.overrides import load_config_file
from roboalign_jax.demo import sft_stage
from roboalign_jax.eval import closed_loop
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.train import vla
from roboalign_jax.train.metrics import latest_per_step, read_metrics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIM_PYTHON = os.path.join(REPO_ROOT, ".venv-metaworld", "bin", "python")
# Tasks whose objects and targets the cameras see (the policy's state is proprioception only) and
# whose experts succeed 10/10; disassemble needs a grasp. It is also the probe's task.
TASKS = ("drawer-open-v3", "button-press-topdown-v3", "disassemble-v3")
PROBE_TASK = "disassemble-v3"
TRAIN_SEEDS = "0-11"       # one task variant per seed: 12 demonstrations per task (and the probe's)
HELDOUT_SEEDS = "100-105"  # held-out variants: the offline action MSE
EVAL_SEEDS = "0-7"         # closed-loop trials per task: training variants (see the report text)
HEAD_STEPS = 600
EVAL_MAX_STEPS = 0  # 0 = each task's budget (eval/metaworld/env.py MAX_STEPS)
RESOLUTION = 128
WORKERS = 2


def _run(command: list[str], what: str, timeout: float) -> str:
  """Runs a launcher as a user would; its output tail goes into the error if it fails."""
  result = subprocess.run(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)
  if result.returncode != 0:
    raise RuntimeError(f"{what} failed ({' '.join(command)}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
  return result.stdout


def _require_simulator() -> None:
  if not os.path.isfile(SIM_PYTHON):
    raise RuntimeError(f"the Meta-World simulator environment is missing ({SIM_PYTHON}); `make demo` builds it "
                       "once with `make sim-metaworld` (or run that yourself before launch/demo.py)")


def record(out_dir: str, seeds: str, *, tasks: Sequence[str] | None = None, resolution: int | None = None,
           sim_python: str | None = None) -> dict[str, Any]:
  """Expert demonstrations of `tasks` (default TASKS) on `seeds` (launch/record_metaworld.py, the
  simulator in `sim_python`, default .venv-metaworld) -> the recording report
  (<out_dir>/metaworld_recording.json: dataset path, episodes_written, expert_success, per_task)."""
  _run([sys.executable, os.path.join(REPO_ROOT, "launch", "record_metaworld.py"),
        f"--tasks={','.join(tasks or TASKS)}", f"--trials={seeds}", f"--out_dir={out_dir}",
        f"--resolution={resolution or RESOLUTION}", f"--sim_python={sim_python or SIM_PYTHON}", "--overwrite"],
       "recording the Meta-World expert", timeout=1800)
  with open(os.path.join(out_dir, "metaworld_recording.json")) as f:
    return json.load(f)


def _base_dir(context: dict[str, Any], stage_dir: str) -> str:
  """The untrained starting model as an HF directory: the SFT run's random init (same variant and
  seed, so the probe and Stage 3 see the weights SFT started from), or a random tiny model."""
  out_dir = os.path.join(stage_dir, "backbones", "base")
  if "sft_config" not in context:
    return backbone_lib.family("qwen2_5_vl").write_tiny(out_dir)
  backbone, params = sft_stage.base_backbone(context["sft_config"])
  return backbone.export(jax.device_get(params), out_dir)


def backbones(context: dict[str, Any], stage_dir: str) -> dict[str, str]:
  dirs = {"base": _base_dir(context, stage_dir)}
  for name, key in (("sft", "sft_hf_dir"), ("grpo", "grpo_hf_dir")):
    if key in context:
      dirs[name] = context[key]
  return dirs


def train_head(backbone_dir: str, train_data: str, heldout_data: str, run_dir: str, cache_dir: str) -> dict[str, Any]:
  """The tiny head on one frozen backbone; features are computed once into a cache."""
  config = load_config_file(os.path.join(REPO_ROOT, "configs", "vla.py") +
                            f":tiny,backbone={backbone_dir},data={train_data},spec=metaworld,"
                            f"eval_data={heldout_data},steps={HEAD_STEPS}")
  config.data.update(cameras=("primary",), augment=False, cache_dir=cache_dir, progress=False)
  config.vla.cache_features = True
  config.export.copy_backbone = True  # the tiny backbone (3 MB) inside: runs/demo/policy serves on its own
  config.evals.heldout.update(every=HEAD_STEPS)
  summary = vla.train(config, run_dir)
  records = read_metrics(run_dir)
  mse = latest_per_step(records, "eval/action_mse")
  return {"policy_dir": summary["policy_dir"], "action_mse": mse[max(mse)]}


def evaluate(policy_dir: str, out_dir: str, *, videos: bool) -> dict[str, Any]:
  """Closed loop through the real server; returns the harness's summary.json."""
  harness = ["--video_format=gif", f"--videos_per_task={1 if videos else 0}", f"--max_steps={EVAL_MAX_STEPS}"]
  _run([sys.executable, os.path.join(REPO_ROOT, "launch", "eval_metaworld.py"), f"--policy_dir={policy_dir}",
        f"--out_dir={out_dir}", f"--tasks={','.join(TASKS)}", f"--trials={EVAL_SEEDS}", f"--workers={WORKERS}",
        "--", *harness], "the closed-loop Meta-World evaluation", timeout=3600)
  with open(os.path.join(out_dir, "summary.json")) as f:
    return json.load(f)


def run(context: dict[str, Any]):
  _require_simulator()
  workdir = context["workdir"]
  stage_dir = os.path.join(workdir, "vla")
  train_rec = record(os.path.join(stage_dir, "data_train"), TRAIN_SEEDS)
  heldout_rec = record(os.path.join(stage_dir, "data_heldout"), HELDOUT_SEEDS)
  dirs = backbones(context, stage_dir)
  metrics: dict[str, Any] = {"metaworld.expert_success": train_rec["expert_success_overall"],
                             "metaworld.train_episodes": train_rec["episodes_written"]}
  for task, rate in train_rec["expert_success"].items():
    metrics[f"metaworld.expert_success.{task}"] = rate
  results = {}
  for name, backbone_dir in dirs.items():
    head = train_head(backbone_dir, train_rec["dataset"], heldout_rec["dataset"], os.path.join(stage_dir, name),
                      os.path.join(stage_dir, "cache"))
    summary = evaluate(head["policy_dir"], os.path.join(stage_dir, f"eval_{name}"), videos=True)
    results[name] = (head, summary)
    metrics[f"vla.{name}.success"] = summary["success_rate"]
    for task in TASKS:
      metrics[f"vla.{name}.success.{task}"] = summary["tasks"][task]["success_rate"]
    metrics[f"vla.{name}.action_mse"] = head["action_mse"]
  # Best: highest mean success, then lowest held-out action MSE.
  best = min(results, key=lambda n: (-results[n][1]["success_rate"], results[n][0]["action_mse"]))
  policy_dir = os.path.join(workdir, "policy")
  shutil.rmtree(policy_dir, ignore_errors=True)
  shutil.copytree(results[best][0]["policy_dir"], policy_dir)
  metrics["vla.best"] = best
  context.update(backbone_dirs=dirs, metaworld={"train": train_rec["dataset"], "heldout": heldout_rec["dataset"],
                                                "tasks": TASKS,
                                                "probe_instruction": train_rec["per_task"][PROBE_TASK]["instruction"]})
  return metrics, ("Stage 3 in closed loop: Meta-World", _text(results, best, train_rec),
                   _videos(os.path.join(stage_dir, f"eval_{best}"), workdir))


def _videos(eval_dir: str, workdir: str) -> list[str]:
  """One GIF per task of the best policy (a successful trial where there is one), relative to the report."""
  with open(os.path.join(eval_dir, "results.jsonl")) as f:
    trials = [json.loads(line) for line in f if line.strip()]
  paths = []
  for task in TASKS:
    recorded = sorted((t for t in trials if t["task"] == task and t.get("video")), key=lambda t: not t["success"])
    if recorded:
      paths.append(os.path.relpath(os.path.join(eval_dir, recorded[0]["video"]), workdir))
  return paths


def _text(results, best, train_rec) -> str:
  header = "| backbone | " + " | ".join(TASKS) + " | mean | held-out action MSE |"
  rows = [header, "|---" * (len(TASKS) + 3) + "|"]
  for name, (head, summary) in results.items():
    cells = [f"{100 * summary['tasks'][t]['success_rate']:.0f}" for t in TASKS]
    rows.append(f"| {name}{' (best)' if name == best else ''} | " + " | ".join(cells) +
                f" | {100 * summary['success_rate']:.1f} | {head['action_mse']:.4f} |")
  expert = ", ".join(f"{t} {100 * r:.0f}%" for t, r in train_rec["expert_success"].items())
  trials = len(closed_loop.index_list(EVAL_SEEDS, 10**6))
  return (f"Scripted experts recorded {train_rec['episodes_written']} demonstrations (seeds {TRAIN_SEEDS}; expert "
          f"success {expert}) at {RESOLUTION} px, corner camera, proprioceptive state (hand xyz, gripper). A tiny "
          f"flow-matching head (`configs/vla.py:tiny`, {HEAD_STEPS} steps on cached features) was trained on each "
          f"frozen backbone and evaluated in closed loop through the openpi-protocol server, {trials} trials per task "
          f"(seeds {EVAL_SEEDS}: the training variants, so this measures imitation, not generalisation to new "
          f"variants; held-out seeds {HELDOUT_SEEDS} give the offline action MSE of the normalised actions). "
          f"Success rates in %:\n\n"
          + "\n".join(rows) + f"\n\nThe best policy (`{best}`) is in `policy/`; one episode per task below.")
