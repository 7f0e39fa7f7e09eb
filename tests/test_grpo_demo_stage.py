"""`make demo`'s GRPO stage, shortened and run on its own: it builds its inputs, warms up, trains,
validates (before training, every VAL_EVERY rollout batches and at the end), exports, and reports
the metrics and curves the demo promises. (The learning signal itself is asserted by
test_grpo_trainer.py.)"""

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
  monkeypatch.setattr(grpo_stage, "VAL_EVERY", 2)
  context = {"workdir": str(tmp_path)}
  metrics, (heading, text, images) = grpo_stage.run(context)
  for part in ("", "val_"):
    for key in ("accuracy_reward", "format_reward", "response_length"):
      for end in ("first", "last"):
        assert isinstance(metrics[f"grpo.{part}{key}_{end}"], float), (part, key, end)
    assert 0 <= metrics[f"grpo.{part}accuracy_reward_last"] <= 1 and 0 <= metrics[f"grpo.{part}format_reward_last"] <= 1
    assert 0 < metrics[f"grpo.{part}response_length_first"] <= 28  # tiny config's max_new_tokens
  assert metrics["grpo.steps"] == 3
  assert metrics["grpo.val_steps"] == 3  # before training (0), every 2 (2) and after the last (3)
  assert "held-out episodes" in text
  assert heading == "Stage 2: GRPO" and "random tiny backbone" in text
  assert images == ["grpo_accuracy_reward.png", "grpo_format_reward.png", "grpo_response_length.png"]
  for image in images:
    assert (tmp_path / image).stat().st_size > 1000
  assert os.path.isfile(os.path.join(context["grpo_hf_dir"], "model.safetensors"))
  path = report.write_report(str(tmp_path), title="t", metrics=metrics, sections=[(heading, text, images)])
  assert "## Stage 2: GRPO" in open(path).read()
  assert json.load(open(tmp_path / "metrics.json"))["grpo.steps"] == 3
