"""`make demo`'s GRPO stage, shortened and run on its own: it builds its inputs, warms up, trains,
exports, and reports the metrics and curves the demo promises. (The learning signal itself is
asserted by test_grpo_trainer.py.)"""

import json
import os

import pytest

from roboalign_jax.demo import grpo_stage
from roboalign_jax.eval import report

pytestmark = pytest.mark.slow


def test_grpo_stage_reports_reward_curves(tmp_path, monkeypatch):
  monkeypatch.setattr(grpo_stage, "STEPS", 3)
  monkeypatch.setattr(grpo_stage, "WARMUP_STEPS", 5)
  monkeypatch.setattr(grpo_stage, "WINDOW", 2)
  context = {"workdir": str(tmp_path)}
  metrics, (heading, text, images) = grpo_stage.run(context)
  for key in ("grpo.accuracy_reward_first", "grpo.accuracy_reward_last", "grpo.format_reward_last",
              "grpo.response_length_first", "grpo.response_length_last"):
    assert isinstance(metrics[key], float), key
  assert 0 <= metrics["grpo.accuracy_reward_last"] <= 1 and 0 <= metrics["grpo.format_reward_last"] <= 1
  assert 0 < metrics["grpo.response_length_first"] <= 28  # tiny config's max_new_tokens
  assert metrics["grpo.steps"] == 3
  assert heading == "Stage 2: GRPO" and "random tiny backbone" in text
  assert images == ["grpo_accuracy_reward.png", "grpo_format_reward.png", "grpo_response_length.png"]
  for image in images:
    assert (tmp_path / image).stat().st_size > 1000
  assert os.path.isfile(os.path.join(context["grpo_hf_dir"], "model.safetensors"))
  path = report.write_report(str(tmp_path), title="t", metrics=metrics, sections=[(heading, text, images)])
  assert "## Stage 2: GRPO" in open(path).read()
  assert json.load(open(tmp_path / "metrics.json"))["grpo.steps"] == 3
