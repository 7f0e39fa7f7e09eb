"""Stage 2 (GRPO): RL on BridgeV2 FAST prompts with the reward (format + prefix accuracy) / 2,
starting from the Stage 1 model (an HF directory with the action tokens).

  python launch/train.py --config=configs/grpo.py:7b,init=runs/sft/hf,fast=runs/fast,data=/data/bridge/1.0.0 \
      --workdir=runs/grpo --config.mesh.fsdp=8
  python launch/train.py --config=configs/grpo.py:tiny,init=runs/demo/sft/hf,fast=runs/demo/fast,data=runs/demo/fixtures/bridge/1.0.0 \
      --workdir=runs/grpo_tiny

Variants: `7b` (the paper's EasyR1 defaults: 512 prompts x 5 samples per rollout batch, updates of
128 samples -> 20 optimiser steps per rollout batch, constant lr 1e-6, AdamW wd 1e-2, clip 1.0,
one epoch over a 12.8K-prompt set = 25 rollout batches), `3b` (the same recipe for the 3B
backbone); with `family=qwen3_vl`: `8b` (Qwen3-VL-8B, the 7b recipe), `4b`, `2b`; `tiny` (the tiny backbone on fixture data, minutes on a 2-core CPU; a larger lr,
since a few dozen updates at 1e-6 would not move it).
Arguments: family (qwen2_5_vl | qwen3_vl), init (HF directory to start from), fast (FAST tokenizer dir), data (TFDS version
directory of a Bridge-layout dataset), spec (its layout, default bridge), steps (rollout
batches; default: one epoch over grpo.num_prompts), eval_data / eval_split (held-out prompts for
validation: a TFDS directory and its split, e.g. `eval_data=/data/bridge/1.0.0,eval_split=val` for
BridgeV2's validation split; default: none -> no validation).

Validation (`config.evals.validation`, train/grpo_eval.py) follows EasyR1's trainer: the
starting policy before training (val_before_train), every 5 rollout batches (val_freq) and after
the last, sampled as EasyR1's example val_override_config (temperature 0.6, top_p 0.95, n 1)
with fixed keys; logged as val/reward, val/accuracy_reward, val/format_reward, val/response_length.

A "step" of this stage is one rollout batch (EasyR1's global step): `train.num_steps`,
`checkpoint.every_steps` and `metrics.jsonl` count rollout batches; `optimizer_steps` in the log
counts updates.
"""

import ml_collections

from roboalign_jax.config import args as config_args
from roboalign_jax.config.base import base_config
from roboalign_jax.data.config import data_config, dataset_entry
from roboalign_jax.data.samples import GRPO_SYSTEM_PROMPT


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse(arg, variants=("tiny", "3b", "7b", "2b", "4b", "8b"), family="qwen2_5_vl", init="",
                           fast="", data="", spec="bridge", steps=0, eval_data="", eval_split="train")
  config = base_config("grpo")
  config.variant = args.variant
  config.model = ml_collections.ConfigDict(dict(
      family=config_args.check_family(args.family, args.variant),  # models/backbone.py registry
      init_dir=args.init,     # HF directory of the Stage 1 model (tokenizer + image processor inside)
      param_dtype="float32",
      compute_dtype="",       # "" = param_dtype; "bfloat16" on accelerators
      remat=False))
  datasets = [dataset_entry(args.spec, args.data)] if args.data else []
  # Prompts: the primary camera's current frame + instruction; no augmentation in RL.
  config.data = data_config(datasets=datasets, sample="grpo", fast_tokenizer_dir=args.fast,
                            global_batch_size=512, cameras=("primary",), history=1, augment=False,
                            image_size=(224, 224), max_seq_len=384, model_family=config.model.family,
                            system_prompt=GRPO_SYSTEM_PROMPT)
  config.rollout = ml_collections.ConfigDict(dict(
      num_samples=5, max_new_tokens=256, temperature=1.0, top_p=1.0, top_k=0))
  config.grpo = ml_collections.ConfigDict(dict(
      num_prompts=12800,      # the RL prompt set; one epoch = num_prompts / data.global_batch_size rollouts
      update_batch_size=128,  # samples per optimiser step
      micro_batch_size=8,     # samples per forward/backward inside an update (gradients summed)
      clip_low=0.2, clip_high=0.3, clip_dual=3.0, kl_coef=1e-2,
      reward="roboalign",     # rl/rewards.py REWARDS: (format + FAST-id prefix accuracy) / 2
      online_filtering=False,  # drop groups whose rewards are all equal before the update
      ))
  # Validation on held-out prompts (train/grpo_eval.py): EasyR1's val_before_train, val_freq and
  # val_override_config; `every` counts rollout batches.
  config.evals.validation = ml_collections.ConfigDict(dict(
      type="grpo_validation", every=5, before_train=True,
      datasets=[dataset_entry(args.spec, args.eval_data)] if args.eval_data else [],
      split=args.eval_split,  # the TFDS split of the held-out datasets
      num_prompts=512, batch_size=128,  # fixed prompt set, generated batch_size prompts at a time
      num_samples=1, temperature=0.6, top_p=0.95, seed=0,  # fixed keys from seed; temperature 0 = greedy
      max_new_tokens=0))  # 0 = rollout.max_new_tokens
  config.optim = ml_collections.ConfigDict(dict(
      lr=1e-6, schedule="constant", warmup_ratio=0.0, warmup_steps=0, final_lr_ratio=0.0,
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, grad_clip=1.0, accumulate_steps=1, frozen=()))
  config.export = ml_collections.ConfigDict(dict(hf_dir=""))  # "" = <workdir>/hf; "none" = skip
  config.train.num_steps = 0  # 0 = one epoch over grpo.num_prompts
  config.train.log_every = 1
  config.checkpoint.every_steps = 5

  if args.variant in ("2b", "3b", "4b"):
    config.model.compute_dtype = "bfloat16"
  elif args.variant in ("7b", "8b"):
    config.model.compute_dtype = "bfloat16"
    config.model.remat = True
  else:  # tiny
    config.data.global_batch_size = 8
    config.data.image_size = (112, 112)  # 8x8 patches -> 16 image tokens
    config.data.max_seq_len = 288
    config.data.action_horizon = 1
    config.rollout.update(num_samples=4, max_new_tokens=28)
    config.grpo.update(num_prompts=8 * 40, update_batch_size=16, micro_batch_size=16)
    config.optim.lr = 1e-3
    config.checkpoint.every_steps = 10
    # 16 held-out prompts x 4 samples with the rollout's sampling (EasyR1's default, an empty
    # val_override_config): at this scale RL mostly sharpens the policy around the answer that
    # greedy or temperature-0.6 decoding already gives, which only full-temperature samples show.
    # Batches of 8 prompts reuse the rollout's compiled sampler.
    config.evals.validation.update(num_prompts=16, batch_size=8, num_samples=4, temperature=1.0, top_p=1.0)
  if args.steps:
    config.train.num_steps = args.steps
  return config
