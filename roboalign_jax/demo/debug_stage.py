"""Demo stage `debug`: the training machinery on a synthetic token map (seconds on a CPU)."""

from __future__ import annotations

import os
from typing import Any

from roboalign_jax.config.overrides import load_config_file
from roboalign_jax.eval import report
from roboalign_jax.train import debug
from roboalign_jax.train.metrics import latest_per_step, read_metrics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(context: dict[str, Any]):
  workdir = context["workdir"]
  config = load_config_file(os.path.join(REPO_ROOT, "configs", "debug.py") + ":tiny")
  config.train.log_every = 5
  stage_dir = os.path.join(workdir, "debug")
  debug.train(config, stage_dir)
  records = read_metrics(stage_dir)
  loss = latest_per_step(records, "loss")
  accuracy = latest_per_step(records, "accuracy")
  eval_accuracy = latest_per_step(records, "eval/accuracy")
  steps = sorted(loss)
  image = report.plot_curves(os.path.join(workdir, "debug_loss.png"),
                             {"train loss": (steps, [loss[s] for s in steps])},
                             title="debug stage: training loss", ylabel="cross-entropy", logy=True)
  metrics = {"debug.initial_loss": loss[steps[0]], "debug.final_loss": loss[steps[-1]],
             "debug.final_accuracy": accuracy[steps[-1]], "debug.steps": steps[-1],
             "debug.eval_accuracy": eval_accuracy[max(eval_accuracy)]}
  text = (f"A {config.model.num_layers}-layer MLP language model learns the token map "
          f"x -> ({config.data.multiplier}x + {config.data.offset}) mod {config.data.vocab_size} "
          f"through the full machinery (mesh, sharded state, Grain data, Orbax checkpoints). "
          f"Chance accuracy is {1 / config.data.vocab_size:.3f}; `debug.eval_accuracy` is measured on "
          f"{config.data.eval_examples} held-out sequences.")
  return metrics, ("Debug stage (training machinery)", text, [os.path.basename(image)])
