"""Stage 1 (SFT): teach the backbone FAST action tokens over a mixture of conversation data
(general VQA, embodied/spatial VQA, reasoning with chain of thought) and BridgeV2 FAST samples.

  python launch/train.py --config=configs/sft.py:7b,init=/ckpt/Qwen2.5-VL-7B-Instruct,fast=runs/fast,data=/data/bridge/1.0.0,vqa=/data/sft/vqa.jsonl,embodied=/data/sft/embodied.jsonl,reasoning=/data/sft/reasoning.jsonl \
      --workdir=runs/sft --config.mesh.fsdp=8
  python launch/train.py --config=configs/sft.py:tiny,processor=runs/demo/qwen_tiny,fast=runs/demo/fast,data=runs/demo/fixtures/bridge/1.0.0 \
      --workdir=runs/sft_tiny
  # export the latest checkpoint of a run as an HF directory, without training:
  python launch/train.py --config=configs/sft.py:tiny,... --workdir=runs/sft_tiny --config.export.only=True

Variants: `7b` (the paper's settings: AdamW, peak lr 2e-5, cosine with warmup ratio 0.03, grad
clip 1.0, one epoch over the mixture, vision tower frozen, LLM + merger trained, bf16 compute,
remat), `3b` (same recipe for the 3B backbone), `tiny` (the tiny backbone, random init, on fixture
data; a couple of minutes on a 2-core CPU; larger lr since a few hundred steps at 2e-5 would not
move a random model); with `family=qwen3_vl`: `8b` (the paper's Table 5 backbone, Qwen3-VL-8B,
the 7b recipe), `4b`, `2b`, `tiny`.
Arguments: family (qwen2_5_vl | qwen3_vl), init (HF directory to start from; "" = random init of `model.variant`), processor
(directory with tokenizer + image processor; default: init), fast (FAST tokenizer dir), data
(TFDS directory of the Bridge-layout FAST data), spec (its layout), vqa / embodied / reasoning
(LLaVA-format JSONL files), eval_data (held-out robot data; default: none -> no generation eval),
mixture ("full" | "language_only" | "action_only": the paper's SFT baselines), steps (0 = one epoch).
"""

import ml_collections

from roboalign_jax.config import args as config_args
from roboalign_jax.config.base import base_config
from roboalign_jax.data.config import data_config, dataset_entry

MIXTURES = ("full", "language_only", "action_only")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse(arg, variants=("tiny", "3b", "7b", "2b", "4b", "8b"), family="qwen2_5_vl", init="",
                           processor="", fast="", data="", spec="bridge", vqa="", embodied="", reasoning="",
                           eval_data="", mixture="full", steps=0)
  if args.mixture not in MIXTURES:
    raise config_args.ConfigArgError(f"unknown mixture {args.mixture!r}; allowed: {list(MIXTURES)}")
  config = base_config("sft")
  config.variant = args.variant
  config.model = ml_collections.ConfigDict(dict(
      family=config_args.check_family(args.family, args.variant),  # models/backbone.py registry
      init_dir=args.init,        # HF checkpoint dir; "" = random init of `variant` (tiny)
      variant=args.variant,      # shapes for random init
      param_dtype="float32",
      compute_dtype="",          # "" = param_dtype; "bfloat16" on accelerators
      remat=False,
      # Images of one size let the vision tower attend per image (see models/qwen2_5_vl/model.py);
      # "auto" uses it whenever every image of a batch has the same patch grid.
      per_image_vision="auto"))
  datasets = [dataset_entry(args.spec, args.data)] if args.data else []
  conversations = [{"path": p, "weight": 1.0, "name": n} for n, p in (
      ("vqa", args.vqa), ("embodied", args.embodied), ("reasoning", args.reasoning)) if p]
  config.data = data_config(datasets=datasets, sample="fast_sft", fast_tokenizer_dir=args.fast,
                            processor_dir=args.processor or args.init, global_batch_size=128,
                            cameras=("primary",), history=1, image_size=(224, 224), max_seq_len=0,
                            num_threads=8, prefetch_buffer=4, model_family=config.model.family)
  config.data.conversations = conversations
  config.sft = ml_collections.ConfigDict(dict(
      mixture=args.mixture,
      # One epoch visits every record once: mixture weights = source sizes (the weights in
      # data.datasets / data.conversations are used as given when False).
      weight_by_size=True,
      # Token sequences of a batch are padded to the next multiple of this (a few compiled shapes,
      # little padding); data.max_seq_len > 0 fixes one length instead (needed with several processes).
      pad_multiple=128,
      # Images per batch, padded with blank ones: 0 = the next multiple of the batch size; > 0 =
      # exactly this many (one compiled shape; an error if a batch holds more).
      images_per_batch=0,
      num_epochs=1.0))
  # Held-out FAST metrics (teacher-forced and greedy; train/sft_eval.py) every 500 steps and at the end.
  config.evals.heldout = ml_collections.ConfigDict(dict(
      type="sft_heldout", every=500,
      datasets=[dataset_entry(args.spec, args.eval_data)] if args.eval_data else [],
      num_batches=4, batch_size=32,
      max_new_tokens=64))      # greedy decoding budget for the action answer
  config.optim = ml_collections.ConfigDict(dict(
      lr=2e-5, schedule="cosine", warmup_ratio=0.03, warmup_steps=0, final_lr_ratio=0.0,
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0, accumulate_steps=1,
      # The paper freezes the vision encoder; the merger (projector) trains with the LLM.
      frozen=("^visual/(?!merger)",)))
  config.export = ml_collections.ConfigDict(dict(
      hf_dir="",        # "" = <workdir>/hf; "none" = no export
      only=False))      # True: export the latest checkpoint and exit (export on request)
  config.train.num_steps = 0  # 0 = sft.num_epochs over the mixture
  config.train.log_every = 10
  config.checkpoint.every_steps = 1000

  if args.variant != "tiny":  # the released sizes: 3b / 7b (Qwen2.5-VL), 2b / 4b / 8b (Qwen3-VL)
    config.model.update(compute_dtype="bfloat16", remat=True)
    config.data.max_seq_len = 1024  # one shape on every process
  else:
    config.data.update(global_batch_size=16, image_size=(112, 112), action_horizon=2, num_threads=2,
                       prefetch_buffer=2, shuffle_block_episodes=8, cache_episodes=16)
    # One compiled shape: on a CPU a recompile costs more than the padding it saves.
    config.data.max_seq_len = 192
    config.sft.images_per_batch = 32
    config.evals.heldout.update(every=100, num_batches=2, batch_size=16, max_new_tokens=24)
    config.optim.update(lr=3e-3, weight_decay=0.0)
    config.train.update(num_steps=200, log_every=10)
    config.checkpoint.every_steps = 100
  if args.mixture == "language_only":
    config.data.datasets = []
  elif args.mixture == "action_only":
    config.data.conversations = []
  if args.steps:
    config.train.num_steps = args.steps
  return config
