"""Stage 3 (VLA): a GR00T-N1.5 flow-matching head trained on the frozen backbone's layer-18
features, per benchmark. The backbone is any Qwen2.5-VL directory (Qwen3-VL with family=qwen3_vl):
the base model, the Stage 1 export or the Stage 2 export -- the paper's base / SFT / SFT+RL comparison.

  python launch/train.py --config=configs/vla.py:libero,backbone=/ckpt/Qwen2.5-VL-7B-Instruct,data=/data/rlds/libero_spatial_no_noops/1.0.0 \
      --workdir=runs/vla_base --config.mesh.fsdp=8
  python launch/train.py --config=configs/vla.py:libero,backbone=runs/sft/hf,data=... --workdir=runs/vla_sft
  python launch/train.py --config=configs/vla.py:libero,backbone=runs/grpo/hf,data=... --workdir=runs/vla_grpo
  python launch/train.py --config=configs/vla.py:libero,family=qwen3_vl,backbone=/ckpt/Qwen3-VL-8B-Instruct,data=... \
      --workdir=runs/vla_qwen3_base   # Table 5: layer 23 of 36 by default
  python launch/train.py --config=configs/vla.py:tiny,backbone=runs/demo/grpo/run/hf,data=runs/demo/vla_data/libero/1.0.0 \
      --workdir=runs/vla_tiny

Variants: `libero` (60K steps), `calvin` (100K), `real` (30K): batch 32, GR00T N1.5's fine-tuning
recipe (AdamW beta (0.95, 0.999), eps 1e-8, lr 1e-4, weight decay 1e-5 on matrices only, warmup
ratio 0.05, cosine, clip 1.0, bf16), head `gr00t_n1_5`, primary + wrist camera at 224 px,
horizon 16, state padded to 64, actions to 32; `tiny` (the tiny head on a tiny backbone and a
fixture, minutes on a 2-core CPU; the `small` head: GR00T's structure at widths 64-128 with
fan-in initialisation of its per-embodiment layers).
Arguments: family (the backbone's: qwen2_5_vl | qwen3_vl), backbone (checkpoint directory; its
tokenizer/processor are used), data (TFDS version
directory), spec (its layout: libero, calvin, bridge), eval_data (held-out episodes for the
offline action-MSE evaluator), head_init (a GR00T N1.5 checkpoint directory to start the head
from; "" = random), steps.
"""

import ml_collections

from roboalign_jax.config import args as config_args
from roboalign_jax.config.base import base_config
from roboalign_jax.data.config import data_config, dataset_entry

STEPS = {"libero": 60_000, "calvin": 100_000, "real": 30_000, "tiny": 300}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse(arg, variants=("tiny", "libero", "calvin", "real"), family="qwen2_5_vl", backbone="",
                           data="", spec="", eval_data="", head_init="", steps=0)
  spec = args.spec or {"calvin": "calvin"}.get(args.variant, "libero")
  config = base_config("vla")
  config.variant = args.variant
  config.model = ml_collections.ConfigDict(dict(
      family=config_args.check_family(args.family),  # models/backbone.py registry
      init_dir=args.backbone,  # the frozen backbone: base HF checkpoint, Stage 1 or Stage 2 export
      param_dtype="float32",
      compute_dtype="",        # "" = param_dtype; "bfloat16" on accelerators
      remat=False))
  config.head = ml_collections.ConfigDict(dict(
      variant="gr00t_n1_5",    # models/action_head/config.py; a projection is added when the backbone is wider
      init_gr00t=args.head_init,  # GR00T N1.5 checkpoint dir to start from ("" = random init)
      num_inference_timesteps=0))  # 0 = the variant's (4 Euler steps)
  config.vla = ml_collections.ConfigDict(dict(
      # Hidden states after this decoder layer; 0 = the paper's depth scaled to the backbone
      # (18 of 28 layers: 18 for Qwen2.5-VL-7B, 23 for 3B and for Qwen3-VL-8B / 4B, 18 for
      # Qwen3-VL-2B, 3 for tiny).
      feature_layer=0,
      embodiment_id=31,        # GR00T's slot for a new embodiment
      # Exclude the prompt's left padding from the head's attention (GR00T passes no mask; its
      # prompts are not padded the same way). False reproduces GR00T exactly.
      mask_padding=True,
      # Compute the features once into ArrayRecord and train the head from them (needs
      # data.augment=False; train/feature_cache.py).
      cache_features=False))
  datasets = [dataset_entry(spec, args.data)] if args.data else []
  config.data = data_config(datasets=datasets, sample="vla", processor_dir=args.backbone,
                            model_family=config.model.family, cameras=("primary", "wrist"), history=1,
                            image_size=(224, 224), action_horizon=16, global_batch_size=32, max_seq_len=256,
                            augment=True, max_state_dim=64, max_action_dim=32, num_threads=8, prefetch_buffer=4)
  # Offline action error on held-out episodes every 5000 steps and at the end.
  config.evals.heldout = ml_collections.ConfigDict(dict(
      type="vla_action_mse", every=5000, num_batches=4, batch_size=32, seed=0, num_samples=8,
      datasets=[dataset_entry(spec, args.eval_data)] if args.eval_data else []))
  config.optim = ml_collections.ConfigDict(dict(
      lr=1e-4, schedule="cosine", warmup_ratio=0.05, warmup_steps=0, final_lr_ratio=0.0,
      b1=0.95, b2=0.999, eps=1e-8, weight_decay=1e-5, grad_clip=1.0, accumulate_steps=1, frozen=()))
  config.export = ml_collections.ConfigDict(dict(
      policy_dir="",           # "" = <workdir>/policy; "none" = no export
      copy_backbone=False))    # True: copy the backbone checkpoint into the policy directory
  config.train.num_steps = STEPS[args.variant]
  config.train.log_every = 50
  config.checkpoint.every_steps = 5000

  if args.variant == "tiny":
    config.head.variant = "small"
    config.data.update(image_size=(112, 112), global_batch_size=8, max_seq_len=192, num_threads=2, prefetch_buffer=2,
                       shuffle_block_episodes=8, cache_episodes=16)
    config.evals.heldout.update(every=100, num_batches=2, batch_size=8)
    config.optim.update(lr=1e-3, warmup_ratio=0.05)
    config.train.log_every = 10
    config.checkpoint.every_steps = 100
  else:
    config.model.compute_dtype = "bfloat16"
  if args.steps:
    config.train.num_steps = args.steps
  return config
