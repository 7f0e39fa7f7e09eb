"""GRPO validation as EasyR1's trainer runs it: the `grpo_validation` evaluator.

    config.evals.validation = dict(type="grpo_validation", every=5, before_train=True,
                                   datasets=[...], split="train", num_prompts=512, batch_size=128,
                                   num_samples=1, temperature=0.6, top_p=0.95, seed=0, max_new_tokens=0)

EasyR1 (verl/trainer/ray_trainer.py `_validate` and `fit`) scores a separate validation set
(`data.val_files`) with the training reward function: once before training
(`trainer.val_before_train`, default true), every `trainer.val_freq` global steps (rollout
batches), and after the last step unless that step was just validated. Its responses are sampled
with the rollout settings overridden by `worker.rollout.val_override_config` (the example config:
temperature 0.6, top_p 0.95, n 1). Here:

  prompts   the first `num_prompts` GRPO prompts of the held-out `datasets` (their `split`; e.g.
            other episodes written as their own dataset, or BridgeV2's "val" split of the training
            directory) in the data pipeline's seeded order, without augmentation; a held-out
            dataset named like a training one is normalised with the training statistics, so its
            FAST targets are what the policy is trained to emit. Read once, identically on every
            process; a dataset (path and split) the policy trains on is refused.
  sampling  `num_samples` responses per prompt at `temperature` / `top_p` (0 = greedy) with keys
            fixed by `seed` (not by the step or the train state), `max_new_tokens` (0 = the
            rollout's), so the same params give the same numbers, and two steps' values differ
            only through the params.
  metrics   means over the prompts x samples of the GRPO reward (`config.grpo.reward`):
            val/reward (the overall reward: EasyR1's val/reward_score), val/<component>_reward
            for each component the reward reports (val/accuracy_reward, val/format_reward for
            "roboalign") and val/response_length (tokens up to and including EOS). A held-out
            prompt longer than `data.max_seq_len` or with an empty target is sampled (its batch
            keeps its shape, see `grpo.PromptCollate`) but left out of the means: counted in
            val/prompts_left_out and named in a warning when the set is read.

`every` counts rollout batches (EasyR1's val_freq); `before_train` logs the starting policy's
values at step 0 of a run that starts from scratch (a resumed run does not repeat it).
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np

from roboalign_jax.data import samples as samples_lib
from roboalign_jax.data.pipeline import make_dataset, open_heldout_datasets
from roboalign_jax.models import sampling
from roboalign_jax.parallel import sharding as sharding_lib
from roboalign_jax.rl import rewards
from roboalign_jax.train import grpo

log = logging.getLogger(__name__)

DEFAULTS = dict(datasets=(), split="train", num_prompts=16, batch_size=0, num_samples=1, temperature=0.6,
                top_p=0.95, seed=0, max_new_tokens=0)


def _option(options, name: str):
  value = options.get(name, DEFAULTS[name])
  return DEFAULTS[name] if value is None else value


def _identity(path: str, split: str) -> tuple[str, str]:
  return os.path.realpath(os.path.abspath(path)), split


class GRPOValidation:
  """The held-out prompt set and how it is sampled; `__call__(state, step)` -> `val/...` scalars.

  prompts: the `grpo.Prompts` of each generation batch (every prompt, host arrays).
  """

  def __init__(self, options: ml_collections.ConfigDict, setup):
    config = setup.config
    self.num_prompts = int(_option(options, "num_prompts"))
    self.batch_size = int(_option(options, "batch_size")) or self.num_prompts
    self.num_samples = int(_option(options, "num_samples"))
    self.temperature = float(_option(options, "temperature"))
    self.top_p = float(_option(options, "top_p"))
    self.max_new_tokens = int(_option(options, "max_new_tokens")) or int(config.rollout.max_new_tokens)
    split = str(_option(options, "split"))
    if self.num_prompts < 1 or self.batch_size < 1 or self.num_prompts % self.batch_size:
      raise ValueError(f"grpo_validation: num_prompts={self.num_prompts} must be a positive multiple of "
                       f"batch_size={self.batch_size}")
    if self.num_samples < 1:
      raise ValueError(f"grpo_validation: num_samples={self.num_samples} must be >= 1")
    ways = sharding_lib.data_parallel_size(setup.mesh)
    if (self.batch_size * self.num_samples) % ways:
      raise ValueError(f"grpo_validation: batch_size x num_samples = {self.batch_size * self.num_samples} rows do "
                       f"not split over the mesh's data x fsdp = {ways} ways")
    trained = {_identity(d["path"], "train") for d in setup.data.datasets}
    for entry in options.datasets:
      if _identity(entry["path"], split) in trained:
        raise ValueError(f"grpo_validation: the held-out dataset {entry['path']} (split {split!r}) is a training "
                         "dataset; validation needs prompts the policy is not trained on (other episodes, or "
                         "another split such as BridgeV2's 'val')")

    held_out = ml_collections.ConfigDict(setup.data.to_dict())
    held_out.update(datasets=[dict(d) for d in options.datasets], conversations=[], augment=False, num_workers=0,
                    global_batch_size=self.batch_size)
    handles = open_heldout_datasets(held_out, setup.handles, split)
    # "train" order: the seeded shuffle (prompts spread over episodes); augmentation is off above.
    collate = grpo.PromptCollate(samples_lib.make_builder(held_out), held_out.max_seq_len)
    stream = iter(make_dataset(held_out, "train", handles=handles, process_index=0, process_count=1,
                               collate_fn=collate))
    self.prompts = [grpo.prompts_from_batch(next(stream), gather=False)
                    for _ in range(self.num_prompts // self.batch_size)]
    usable = []
    for prompts in self.prompts:
      ok, warnings = grpo.check_prompts(prompts, held_out.max_seq_len)
      usable.append(ok)
      for message in warnings:
        log.warning("grpo_validation: %s", message.replace("the update", "the validation means"))
    self.usable = np.concatenate(usable)  # bool [num_prompts]: the prompts the means count
    self.key = jax.random.PRNGKey(int(_option(options, "seed")))
    self.reward = config.grpo.reward
    self.backbone, self.eos_ids = setup.backbone, setup.eos_ids
    self.mesh, self.rules = setup.mesh, sharding_lib.as_rules(config.sharding.rules)

  def sample(self, params) -> tuple[np.ndarray, np.ndarray]:
    """Responses of every prompt: tokens int [num_prompts * num_samples, N] and mask bool [same],
    row b*G + g = sample g of prompt b (G = num_samples)."""
    backbone, replicated = self.backbone, sharding_lib.replicated(self.mesh)
    tokens, masks = [], []
    for i, prompts in enumerate(self.prompts):
      inputs = jax.device_put([prompts.input_ids, prompts.attention_mask,
                               prompts.pixel_values.reshape(-1, prompts.pixel_values.shape[-1]),
                               prompts.image_grid_thw], replicated)
      out = sampling.generate(backbone.model, params, *inputs, max_new_tokens=self.max_new_tokens,
                              temperature=self.temperature, top_p=self.top_p, num_samples=self.num_samples,
                              rng=jax.device_put(jax.random.fold_in(self.key, i), replicated),  # as the rollout's
                              eos_token_id=self.eos_ids,
                              pad_token_id=backbone.pad_token_id, mesh=self.mesh, rules=self.rules,
                              suppress_token_ids=backbone.vision_token_ids)
      tokens.append(sharding_lib.host_array(out.tokens))
      masks.append(sharding_lib.host_array(out.mask))
    return np.concatenate(tokens), np.concatenate(masks)

  def targets(self) -> list:
    """The target payload of every response row (each prompt's, repeated for its samples)."""
    return [t for prompts in self.prompts for t in prompts.targets for _ in range(self.num_samples)]

  def __call__(self, state, step: int) -> dict[str, float]:
    del step  # fixed keys: the values depend on the params alone
    tokens, mask = self.sample(state.params)
    scores = rewards.score_responses(tokens, mask, self.targets(), self.backbone.tokenizer,
                                     self.backbone.action_vocab, self.reward)
    rows = np.repeat(self.usable, self.num_samples)
    result = {"val/reward": float(scores["overall"][rows].mean())}
    result.update({f"val/{k}_reward": float(v[rows].mean()) for k, v in scores.items()
                   if k not in ("overall", "length")})
    result["val/response_length"] = float(scores["length"][rows].mean())
    result["val/prompts_left_out"] = float((~self.usable).sum())
    return result


def make_evaluator(options: ml_collections.ConfigDict, setup) -> GRPOValidation | None:
  """The `grpo_validation` evaluator of a `GRPOSetup` (None when `options.datasets` is empty)."""
  if not options.get("datasets"):
    return None
  return GRPOValidation(options, setup)
