"""Demo stage `probe`: the KNN representation probe (RoboAlign Table 9) of the base, SFT and GRPO
backbones, on the demo's Bridge-layout fixture demonstrations.

Uses from the context: `sft_config` (the SFT run's config: its random init, same variant and seed,
is the base model), `sft_hf_dir`, `grpo_hf_dir` and `fixtures["bridge"]`. Backbones the earlier
stages did not produce are skipped; run alone it probes a random tiny backbone on its own fixture.

The fixture's episodes are scripted pick-and-place demonstrations of different scenes (one
instruction template, other objects), so the probe reads all of them (substring "put the") and,
as they are 20-40 steps long, uses 8 phase classes instead of the paper's 32.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax

from roboalign_jax import data
from roboalign_jax.eval import knn_probe
from roboalign_jax.models import backbone as backbone_lib

# 12 demonstrations, 3 held out, 6 test timesteps per class: 48 test points, ~300 prompts per model.
CONFIG = knn_probe.ProbeConfig(instruction="put the", match="substring", num_trajectories=12, num_classes=8,
                               test_trajectories=3, test_per_class=6, batch_size=32)


def _base_backbone(sft_config) -> tuple[backbone_lib.Backbone, Any]:
  """The SFT stage's starting model: its random init, rebuilt from the same variant and seed."""
  backbone = backbone_lib.load(sft_config.model, processor_dir=sft_config.data.processor_dir)
  if backbone.params is not None:  # the SFT run started from a checkpoint directory
    return backbone, backbone.params
  variables = backbone.model.init(jax.random.PRNGKey(sft_config.seed), *backbone.dummy_inputs())
  return backbone, nn.unbox(variables)["params"]


def _models(context: dict[str, Any], stage_dir: str) -> tuple[str, list[tuple[str, Any]]]:
  """(fixture directory, [(name, loader)]) of what the earlier stages produced."""
  if "sft_config" not in context:
    fixture = data.write_fixture("bridge", os.path.join(stage_dir, "fixture"), CONFIG.num_trajectories, seed=0)
    random_dir = backbone_lib.family("qwen2_5_vl").write_tiny(os.path.join(stage_dir, "random"))
    return fixture, [("base", lambda: _loaded(random_dir))]
  models = [("base", lambda: _base_backbone(context["sft_config"])),
            ("sft", lambda: _loaded(context["sft_hf_dir"]))]
  if "grpo_hf_dir" in context:
    models.append(("grpo", lambda: _loaded(context["grpo_hf_dir"])))
  return context["fixtures"]["bridge"], models


def _loaded(hf_dir: str) -> tuple[backbone_lib.Backbone, Any]:
  backbone = backbone_lib.load_dir(hf_dir)
  return backbone, backbone.params


def run(context: dict[str, Any]):
  workdir = context["workdir"]
  fixture, models = _models(context, os.path.join(workdir, "probe"))
  probe_data = knn_probe.load_trajectories(fixture, "bridge", CONFIG)
  metrics, rows, num_test, layer, prepared = {}, [], 0, 0, None
  for name, load in models:
    backbone, params = load()
    # One tokenizer across the stages: the prompts are built once.
    prepared = (knn_probe.prepare(backbone, probe_data, CONFIG) if prepared is None
                else knn_probe.for_backbone(prepared, backbone))
    result = knn_probe.score(params, prepared)
    metrics[f"probe.{name}.knn_accuracy"] = result.accuracy
    rows.append(f"| {name} | {100 * result.accuracy:.1f} |")
    num_test, layer = result.num_test, result.layer
  metrics["probe.num_test"] = num_test
  c = CONFIG
  text = (f"k-NN (k = {c.k}, {c.distance}) on the layer-{layer} hidden state (Stage 3's prompt, mean over the image "
          f"and user-text tokens) of {c.num_trajectories} fixture demonstrations, each timestep labelled with one of "
          f"{c.num_classes} phases by DTW over the robot states against the medoid demonstration. The last "
          f"{c.test_trajectories} demonstrations are held out; {c.test_per_class} of their timesteps per phase are "
          f"classified ({num_test} in all; chance about {100 / c.num_classes:.1f}%). The paper measures 39.06 -> "
          f"43.23 -> 69.79 on Qwen3-VL-8B; on this tiny model and fixture the numbers show the probe runs end to end "
          f"on each stage's weights, not the paper's effect.\n\n| backbone | KNN accuracy (%) |\n|---|---|\n"
          + "\n".join(rows))
  return metrics, ("Representation probe (KNN, Table 9)", text, [])
