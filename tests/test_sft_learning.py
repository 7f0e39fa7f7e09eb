"""A tiny SFT run on the fixture task lowers the loss and lifts held-out FAST-token accuracy far
above chance, and its held-out metrics (greedy decoding included) are all logged."""

from roboalign_jax.train import sft
from roboalign_jax.train.metrics import latest_per_step, read_metrics

import sft_helpers

STEPS = 80


def test_tiny_sft_learns_fast_tokens(tmp_path):
  config = sft_helpers.config(STEPS, mixture="action_only", batch=8)
  config.evals.heldout.update(num_batches=1, every=STEPS)
  config.train.update(log_every=5)
  summary = sft.train(config, str(tmp_path))
  records = read_metrics(str(tmp_path))
  loss = latest_per_step(records, "loss")
  steps = sorted(loss)
  late = [loss[s] for s in steps[-4:]]
  # Measured: 7.3 at step 5 (uniform over the 2.7K-token vocabulary would be ln 2688 = 7.9),
  # 2.0-2.7 over the last 20 steps. A model that learns nothing stays near 7; a loss that also
  # counted prompt tokens would sit far higher on these mostly-prompt sequences.
  assert loss[steps[0]] > 6.0 and max(late) < 0.5 * loss[steps[0]], loss
  accuracy = latest_per_step(records, "eval/fast_token_accuracy")[STEPS]
  # Chance is 1/256 (the fixture FAST vocabulary). Measured on held-out episodes: 0.17 after 80
  # steps, 0.21 after 100; the bound of 10x chance leaves room for run-to-run jitter.
  assert accuracy > 10 / 256, accuracy
  for key in ("eval/loss", "eval/token_accuracy", "eval/action_l1", "eval/decode_failure", "eval/format_valid"):
    assert key in records[-1], key
  assert 0 <= records[-1]["eval/format_valid"] <= 1 and records[-1]["eval/action_l1"] > 0
  assert 0 < summary["padding_fraction"] < 0.5
