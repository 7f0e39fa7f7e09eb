"""notebooks/align_sft_grpo.ipynb: the tiny Stage 1 (SFT) -> format warm-up -> Stage 2 (GRPO) run
through the Python API, its curves read back from metrics.jsonl, and sampled answers of both models
on held-out prompts next to their targets."""

import json

import pytest

import notebook_runner

pytestmark = pytest.mark.slow


def test_align_sft_grpo_notebook(tmp_path):
  summary, seconds = notebook_runner.run_notebook("align_sft_grpo", parameters={"WORKDIR": str(tmp_path)})
  print(f"align_sft_grpo.ipynb ran in {seconds:.0f} s")
  print(json.dumps({k: v for k, v in summary.items() if k != "samples"}))

  fast = summary["fast"]
  assert fast["chunks"] > 100 and fast["tokens_per_chunk"] >= 1 and fast["roundtrip_error"] < 0.05

  sft = summary["sft"]
  assert sft["steps"][-1] == 40 and sft["eval_steps"] == []  # the held-out evaluator is off by default
  # Measured 7.26 -> 4.39 (uniform over the 2.7K-token vocabulary would be ln 2688 = 7.9); a model that
  # learns nothing stays near 7.
  assert sft["loss"][0] > 6.0 and sft["loss"][-1] < 0.75 * sft["loss"][0], sft["loss"]

  warmup = summary["warmup"]
  assert warmup["steps"] == 100 and warmup["loss_last"] < 0.5 * warmup["loss_first"], warmup  # 4.7 -> 1.0

  grpo = summary["grpo"]
  assert grpo["steps"] == [1, 2, 3, 4] and grpo["val_steps"] == [0, 2, 4]
  for prefix in ("", "val_"):
    for key in ("reward", "format_reward", "accuracy_reward"):
      assert all(0 <= x <= 1 for x in grpo[prefix + key]), (prefix, key)
    assert all(0 < x <= 28 for x in grpo[prefix + "response_length"])  # the tiny config's max_new_tokens
    # After the warm-up some sampled answers have the format (measured 0.12-0.25 of them).
    assert max(grpo[prefix + "format_reward"]) > 0, grpo
  # GRPO has a signal: some prompts' samples got different rewards (measured 0.25-0.75 of the groups).
  assert max(grpo["informative_groups"]) > 0 and all(k >= 0 for k in grpo["kl"]), grpo

  samples = summary["samples"]
  assert [s["model"] for s in samples] == ["SFT", "GRPO"] * 4
  for s in samples:
    assert s["text"] and s["length"] > 0 and s["target_ids"], s
    assert 0 <= s["accuracy"] <= 1 and s["format"] in (0.0, 1.0) and s["action_l1"] >= 0
