"""Debug stage: a tiny MLP language model on a synthetic token-mapping task, trained through the
full machinery (mesh, sharded state, Grain data, Orbax checkpoints, metrics, preemption).

  python launch/train.py --config=configs/debug.py:tiny --workdir=runs/debug
  python launch/train.py --config=configs/debug.py:tiny,steps=50 --workdir=runs/debug \
      --config.mesh.fsdp=2 --config.checkpoint.every_steps=10

Variants: `tiny` (a few seconds on a 2-core CPU, used by tests and `make demo`),
`wide` (a larger model for checking throughput on an accelerator).
Arguments: steps (optimiser steps; default per variant).
"""

import ml_collections

from roboalign_jax.config import args as config_args
from roboalign_jax.config.base import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse(arg, variants=("tiny", "wide"), steps=0)
  config = base_config("debug")
  config.variant = args.variant
  config.data = ml_collections.ConfigDict(dict(
      vocab_size=64, seq_len=16, num_examples=4096, global_batch_size=16, seed=0,
      multiplier=5, offset=3, eval_examples=64))
  config.model = ml_collections.ConfigDict(dict(
      embed_dim=32, mlp_dim=128, num_layers=2, dropout_rate=0.1))
  config.optim = ml_collections.ConfigDict(dict(
      lr=3e-3, schedule="cosine", warmup_ratio=0.03, warmup_steps=0, final_lr_ratio=0.0,
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4, grad_clip=1.0, accumulate_steps=1,
      frozen=()))
  config.train.num_steps = 300
  config.train.log_every = 10
  # Loss and accuracy on held-out sequences (never trained on) every 100 steps and at the end.
  config.evals.heldout = ml_collections.ConfigDict(dict(type="debug_heldout", every=100))
  config.checkpoint.every_steps = 100
  if args.variant == "wide":
    config.data.vocab_size = 4096
    config.data.seq_len = 512
    config.data.global_batch_size = 64
    config.model.update(embed_dim=1024, mlp_dim=4096, num_layers=8)
    config.train.num_steps = 1000
  if args.steps:
    config.train.num_steps = args.steps
  return config
