"""Demo stage `probe`: the KNN representation probe (RoboAlign Table 9) of the base, SFT and GRPO
backbones.

After the `vla` stage it probes the backbones Stage 3 used (context `backbone_dirs`) on the
Meta-World expert demonstrations of one task (context `metaworld`: the dataset and the task's
instruction; the probe holds out its last 3 trajectories), as the paper probes LIBERO
demonstrations of one task. Without it, it uses `sft_config` (its random init, same variant and
seed, is the base model), `sft_hf_dir`, `grpo_hf_dir` and the Bridge-layout fixture
`fixtures["bridge"]`, whose episodes are scripted pick-and-place demonstrations of different
scenes (one instruction template), read by the substring "put the". Run alone it probes a random
tiny backbone on its own fixture. The demonstrations are short (20-100 steps), so the probe uses
8 phase classes instead of 32.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

from roboalign_jax import data
from roboalign_jax.demo import sft_stage
from roboalign_jax.eval import knn_probe
from roboalign_jax.models import backbone as backbone_lib

# 12 demonstrations, 3 held out, 6 test timesteps per class: 48 test points, ~300 prompts per model.
CONFIG = knn_probe.ProbeConfig(instruction="put the", match="substring", num_trajectories=12, num_classes=8,
                               test_trajectories=3, test_per_class=6, batch_size=32)


def _models(context: dict[str, Any], stage_dir: str):
  """(dataset directory, spec name, probe config, [(name, loader)]) of what earlier stages produced."""
  if "backbone_dirs" in context and "metaworld" in context:
    metaworld = context["metaworld"]
    config = dataclasses.replace(CONFIG, instruction=metaworld["probe_instruction"], match="exact",
                                 cameras=("primary",))
    models = [(name, functools.partial(_loaded, path)) for name, path in context["backbone_dirs"].items()]
    return metaworld["train"], "metaworld", config, models
  if "sft_config" not in context:
    fixture = data.write_fixture("bridge", os.path.join(stage_dir, "fixture"), CONFIG.num_trajectories, seed=0)
    random_dir = backbone_lib.family("qwen2_5_vl").write_tiny(os.path.join(stage_dir, "random"))
    return fixture, "bridge", CONFIG, [("base", lambda: _loaded(random_dir))]
  models = [("base", lambda: sft_stage.base_backbone(context["sft_config"])),
            ("sft", lambda: _loaded(context["sft_hf_dir"]))]
  if "grpo_hf_dir" in context:
    models.append(("grpo", lambda: _loaded(context["grpo_hf_dir"])))
  return context["fixtures"]["bridge"], "bridge", CONFIG, models


def _loaded(hf_dir: str) -> tuple[backbone_lib.Backbone, Any]:
  backbone = backbone_lib.load_dir(hf_dir)
  return backbone, backbone.params


def run(context: dict[str, Any]):
  workdir = context["workdir"]
  dataset, spec, config, models = _models(context, os.path.join(workdir, "probe"))
  probe_data = knn_probe.load_trajectories(dataset, spec, config)
  metrics, rows, num_test, layer, prepared = {}, [], 0, 0, None
  for name, load in models:
    backbone, params = load()
    # One tokenizer across the stages: the prompts are built once.
    prepared = (knn_probe.prepare(backbone, probe_data, config) if prepared is None
                else knn_probe.for_backbone(prepared, backbone))
    result = knn_probe.score(params, prepared)
    metrics[f"probe.{name}.knn_accuracy"] = result.accuracy
    rows.append(f"| {name} | {100 * result.accuracy:.1f} |")
    num_test, layer = result.num_test, result.layer
  metrics["probe.num_test"] = num_test
  c = config
  source = (f"Meta-World expert demonstrations of \"{c.instruction}\"" if spec == "metaworld"
            else "Bridge-layout fixture demonstrations")
  text = (f"k-NN (k = {c.k}, {c.distance}) on the layer-{layer} hidden state (Stage 3's prompt, mean over the image "
          f"and user-text tokens) of {c.num_trajectories} {source}, each timestep labelled with one of "
          f"{c.num_classes} phases by DTW over the robot states against the medoid demonstration. The last "
          f"{c.test_trajectories} demonstrations are held out; {c.test_per_class} of their timesteps per phase are "
          f"classified ({num_test} in all; chance about {100 / c.num_classes:.1f}%). The paper measures 39.06 -> "
          f"43.23 -> 69.79 on Qwen3-VL-8B; on these tiny models the numbers show the probe runs end to end "
          f"on each stage's weights, not the paper's effect.\n\n| backbone | KNN accuracy (%) |\n|---|---|\n"
          + "\n".join(rows))
  return metrics, ("Representation probe (KNN, Table 9)", text, [])
