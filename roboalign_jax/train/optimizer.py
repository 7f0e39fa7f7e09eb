"""Optimiser and learning-rate schedule from `config.optim`.

Fields: lr, schedule ("constant" | "cosine" | "linear"), warmup_ratio (of total steps) or
warmup_steps (wins when > 0), final_lr_ratio (cosine/linear floor), b1, b2, eps, weight_decay,
grad_clip (≤ 0 disables), accumulate_steps (gradient accumulation), frozen (regexes over
"/"-joined parameter paths; matching parameters get no update and no optimiser state).
Weight decay applies to matrices only (ndim ≥ 2), not to biases and norm scales, as in HF Trainer.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
import optax

SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  if optim.schedule not in SCHEDULES:
    raise ValueError(f"config.optim.schedule={optim.schedule!r}; allowed: {list(SCHEDULES)}")
  warmup = int(optim.get("warmup_steps", 0)) or int(round(optim.get("warmup_ratio", 0.0) * num_steps))
  warmup = min(warmup, num_steps)
  peak, floor = optim.lr, optim.lr * optim.get("final_lr_ratio", 0.0)
  decay_steps = max(num_steps - warmup, 1)
  if optim.schedule == "constant":
    main = optax.constant_schedule(peak)
  elif optim.schedule == "cosine":
    main = optax.cosine_decay_schedule(peak, decay_steps, alpha=floor / peak if peak else 0.0)
  else:
    main = optax.linear_schedule(peak, floor, decay_steps)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def path_string(path: tuple[Any, ...]) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def frozen_labels(params: Any, patterns: list[str]) -> Any:
  """'frozen' / 'trainable' label per leaf, by regex search over its "/"-joined path."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if any(c.search(path_string(path)) for c in compiled) else "trainable",
      params)


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int,
                   params: Any | None = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (+ clipping, schedule, accumulation, frozen subtrees). `params` (or their abstract
  shapes) are needed only when `optim.frozen` is non-empty, to label the tree."""
  schedule = make_schedule(optim, num_steps)
  decay_mask = lambda tree: jax.tree.map(lambda x: getattr(x, "ndim", 0) >= 2, tree)
  chain = []
  if optim.get("grad_clip", 0.0) > 0:
    chain.append(optax.clip_by_global_norm(optim.grad_clip))
  chain.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                           weight_decay=optim.weight_decay, mask=decay_mask))
  tx = optax.chain(*chain)
  frozen = list(optim.get("frozen", ()))
  if frozen:
    if params is None:
      raise ValueError("config.optim.frozen is set; make_optimizer needs the params tree to label it")
    labels = frozen_labels(params, frozen)
    if "trainable" not in jax.tree.leaves(labels):
      raise ValueError(f"config.optim.frozen={frozen} freezes every parameter")
    tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
  if optim.get("accumulate_steps", 1) > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=optim.accumulate_steps)
  return tx, schedule
