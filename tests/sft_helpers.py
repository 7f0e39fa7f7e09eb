"""Shared inputs of the SFT tests: the demo's tiny processor, Bridge-layout fixtures, conversation
fixtures and a fitted FAST tokenizer, written once per test process (about 15 s)."""

from __future__ import annotations

import functools
import tempfile

from roboalign_jax.demo import sft_stage


@functools.lru_cache(maxsize=None)
def prepared() -> dict:
  """Paths as returned by `roboalign_jax.demo.sft_stage.prepare`."""
  return sft_stage.prepare(tempfile.mkdtemp(prefix="sft_test_"), episodes=12, heldout_episodes=3)


def config(steps: int = 0, *, mixture: str = "full", eval_data: bool = True, batch: int = 0):
  """configs/sft.py:tiny on the prepared fixtures, with test-sized batches when `batch` is set."""
  paths = prepared()
  cfg = sft_stage.sft_config(paths, steps=steps)
  if mixture == "action_only":
    cfg.data.conversations = []
  if not eval_data:
    cfg.evals.heldout.datasets = []
  if batch:
    cfg.data.global_batch_size = batch
    cfg.evals.heldout.batch_size = batch
  cfg.export.hf_dir = "none"
  return cfg
