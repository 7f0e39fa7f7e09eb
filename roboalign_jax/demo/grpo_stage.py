"""Demo stage `grpo`: Stage 2 (GRPO) on the tiny model, a few minutes on a CPU.

Uses from the context (the SFT stage puts them there): `sft_hf_dir` (the exported SFT model with
the action tokens), `fast_dir` (its FAST tokenizer), `fixtures` (fixture dataset directories by
spec name; GRPO prompts come from "bridge", validation prompts from "bridge_heldout", episodes
the policy never trains on) and `data_config` (its `cache_dir` is reused). Run alone
(`--stages=grpo`) it writes its own fixtures, FAST tokenizer and tiny random backbone.

Validation (the `grpo_validation` evaluator, EasyR1's val_before_train / val_freq) scores 16
held-out prompts x 4 samples with fixed keys before training and every 5 rollout batches; the
report plots it with the training curves (paper Fig. 6).

Before RL the model gets `demo.format_warmup` (a short supervised warm-up on the GRPO answer format):
the tiny SFT model answers with bare action tokens and never samples `<think>…</think><answer>…`,
so its format reward would be 0 and GRPO would have nothing to reinforce. At paper scale Stage 1's
reasoning data plays this part.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from roboalign_jax import data
from roboalign_jax.config.overrides import load_config_file
from roboalign_jax.data import pipeline
from roboalign_jax.demo import format_warmup
from roboalign_jax.eval import report
from roboalign_jax.fast import FASTTokenizer
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.train import grpo
from roboalign_jax.train.metrics import latest_per_step, read_metrics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 40          # rollout batches of 8 prompts x 4 samples
WARMUP_STEPS = 200  # supervised steps on the answer format
WINDOW = 10         # rollout batches averaged for the "first" and "last" metrics (one is 32 samples)
HORIZON = 1         # action steps per FAST target when the stage builds its own tokenizer
VAL_EVERY = 5       # rollout batches between validations (EasyR1's val_freq); also before the first
CURVES = ("accuracy_reward", "format_reward", "response_length")


def _standalone_inputs(stage_dir: str) -> dict[str, Any]:
  """Fixture, FAST tokenizer and random tiny backbone, when no SFT stage ran before."""
  root = os.path.join(stage_dir, "inputs")
  path = data.write_fixture("bridge", os.path.join(root, "rlds"), 4, 0, episode_length=(20, 26))
  heldout = data.write_fixture("bridge", os.path.join(root, "rlds_heldout"), 2, 1, episode_length=(20, 26))
  cache = os.path.join(root, "cache")
  handles = pipeline.open_datasets(data.data_config(datasets=[data.dataset_entry("bridge", path)], cache_dir=cache,
                                                    progress=False, action_horizon=HORIZON))
  # Coarse (scale 5) and without merges (vocab = alphabet): one token per action dimension.
  FASTTokenizer.fit(pipeline.action_chunks(handles, HORIZON), vocab_size=16, scale=5.0).save(os.path.join(root, "fast"))
  backbone_lib.family("qwen2_5_vl").write_tiny(os.path.join(root, "random"))
  return {"start": os.path.join(root, "random"), "fast": os.path.join(root, "fast"), "bridge": path,
          "heldout": heldout, "cache": cache, "source": "a random tiny backbone (the stage ran without the SFT stage)"}


def _inputs(context: dict[str, Any], stage_dir: str) -> dict[str, Any]:
  if "sft_hf_dir" not in context:
    return _standalone_inputs(stage_dir)
  data_config = context.get("data_config")
  cache = getattr(data_config, "cache_dir", "") if data_config is not None else ""
  return {"start": context["sft_hf_dir"], "fast": context["fast_dir"], "bridge": context["fixtures"]["bridge"],
          "heldout": context["fixtures"]["bridge_heldout"],
          "cache": cache or os.path.join(stage_dir, "cache"), "source": "the SFT stage's model",
          "action_horizon": getattr(data_config, "action_horizon", 0) if data_config is not None else 0}


def _mean(values: dict[int, float], steps) -> float:
  return float(np.mean([values[s] for s in steps]))


def run(context: dict[str, Any]):
  workdir = context["workdir"]
  stage_dir = os.path.join(workdir, "grpo")
  inputs = _inputs(context, stage_dir)
  warm_dir = os.path.join(stage_dir, "start")
  spec = (f"{os.path.join(REPO_ROOT, 'configs', 'grpo.py')}:tiny,init={warm_dir},fast={inputs['fast']},"
          f"data={inputs['bridge']},steps={STEPS},eval_data={inputs['heldout']}")
  config = load_config_file(spec)
  config.data.cache_dir = inputs["cache"]
  if inputs.get("action_horizon"):  # targets of the horizon the FAST tokenizer was fitted on
    config.data.action_horizon = inputs["action_horizon"]
  config.data.progress = False
  config.evals.validation.every = VAL_EVERY
  warmup_data = config.data.copy_and_resolve_references()
  warmup_data.processor_dir = inputs["start"]
  losses = format_warmup.run(inputs["start"], warmup_data, warm_dir, steps=WARMUP_STEPS,
                             response_len=config.rollout.max_new_tokens)
  run_dir = os.path.join(stage_dir, "run")
  summary = grpo.train(config, run_dir)
  context["grpo_hf_dir"] = summary["hf_dir"]

  records = read_metrics(run_dir)
  curves = {key: latest_per_step(records, key) for key in CURVES}
  val = {key: latest_per_step(records, f"val/{key}") for key in CURVES}
  steps, val_steps = sorted(curves["accuracy_reward"]), sorted(val["accuracy_reward"])
  first, last = steps[:WINDOW], steps[-WINDOW:]
  metrics = {"grpo.steps": steps[-1], "grpo.warmup_final_loss": float(np.mean(losses[-10:]))}
  for key in CURVES:
    metrics[f"grpo.{key}_first"] = _mean(curves[key], first)
    metrics[f"grpo.{key}_last"] = _mean(curves[key], last)
    # Validation: the same held-out prompts and keys at every point, so first and last are single values.
    metrics[f"grpo.val_{key}_first"] = float(val[key][val_steps[0]])
    metrics[f"grpo.val_{key}_last"] = float(val[key][val_steps[-1]])
  metrics["grpo.val_steps"] = len(val_steps)
  titles = {"accuracy_reward": ("GRPO: accuracy reward (prefix of FAST ids)", "mean r_acc"),
            "format_reward": ("GRPO: format reward", "mean r_format"),
            "response_length": ("GRPO: response length", "tokens")}
  v = config.evals.validation
  val_label = f"validation ({v.num_prompts} held-out prompts x {v.num_samples}, fixed keys)"
  images = []
  for key, (title, ylabel) in titles.items():
    values = curves[key]
    path = report.plot_curves(os.path.join(workdir, f"grpo_{key}.png"),
                              {"training rollout batch": (steps, [values[s] for s in steps]),
                               val_label: (val_steps, [val[key][s] for s in val_steps])},
                              title=title, ylabel=ylabel)
    images.append(os.path.basename(path))
  r, g = config.rollout, config.grpo
  text = (f"GRPO on {inputs['source']}, after {WARMUP_STEPS} supervised steps on the answer format "
          f"(`demo.format_warmup`). {steps[-1]} rollout batches of {config.data.global_batch_size} fixture prompts x "
          f"{r.num_samples} samples (temperature {r.temperature}, at most {r.max_new_tokens} new tokens), updates of "
          f"{g.update_batch_size} samples, lr {config.optim.lr}, KL coefficient {g.kl_coef}. Reward = (format + "
          f"prefix accuracy of the FAST ids) / 2. First/last training values average {WINDOW} rollout batches; a "
          f"rollout batch's mean swings with the prompts it draws (prefix accuracy is 0 unless the first FAST id is "
          f"right, so a batch of prompts with uncommon first ids scores low). Validation (`val/...`, EasyR1's "
          f"val_before_train and val_freq={v.every}) scores {v.num_prompts} prompts of held-out episodes x "
          f"{v.num_samples} samples (temperature {v.temperature}, top_p {v.top_p}) with fixed keys at rollout batches "
          f"{', '.join(map(str, val_steps))}: the same prompts and keys every time, so its curve moves only with the "
          f"policy. The policy is exported to `{os.path.relpath(summary['hf_dir'], workdir)}`.")
  return metrics, ("Stage 2: GRPO", text, images)
