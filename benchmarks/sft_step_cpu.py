"""SFT step on CPU: ours (the jitted `train.sft` step) vs transformers + torch AdamW, same tiny model
(vocabulary extended with the action tokens), same weights, same batch.

One step = forward, masked next-token cross-entropy on the answer tokens, backward, grad-norm clip
1.0, AdamW update of everything but the vision blocks (the paper's frozen encoder; the merger
trains). The two sides run interleaved (ours, torch, ours, torch, ...; compile and warm-up
excluded); prints tokens/s (padded batch tokens / median step time) of both, the minimums, the
ratio of the medians ours / torch and the load average.

    .venv/bin/python benchmarks/sft_step_cpu.py [--batch 8 --seq 192 --rounds 10 --threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
from timing import interleaved, load_line

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _batch(action_vocab, b: int, t: int, seed: int = 0) -> dict[str, np.ndarray]:
  """b rows of t tokens: an image block (112x112 -> 16 tokens), prompt text, a FAST answer."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((b, t), np.int32)
  mask = np.zeros((b, t), np.int32)
  answer = 12
  for i in range(b):
    prompt = [9] + [12] * 16 + [10] + rng.integers(20, 500, t - 18 - answer).tolist()
    ans = [action_vocab.action_start_id, *(action_vocab.first_action_token_id + rng.integers(0, 256, answer - 3)),
           action_vocab.action_end_id, 2]
    ids[i] = prompt + ans
    mask[i, t - answer:] = 1
  return {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": mask,
          "pixel_values": rng.normal(size=(b * 64, 1176)).astype(np.float32),
          "image_grid_thw": np.tile(np.array([[1, 8, 8]], np.int32), (b, 1))}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=192)
  ap.add_argument("--rounds", type=int, default=10)
  ap.add_argument("--threads", type=int, default=2)
  args = ap.parse_args()

  import torch
  torch.set_num_threads(args.threads)
  import jax
  from transformers import Qwen2_5_VLForConditionalGeneration

  from roboalign_jax.config.overrides import load_config_file
  from roboalign_jax.models.qwen2_5_vl import tiny
  from roboalign_jax.parallel import mesh as mesh_lib
  from roboalign_jax.parallel import sharding as sharding_lib
  from roboalign_jax.train import sft

  root = tempfile.mkdtemp(prefix="sft_bench_")
  processor = os.path.join(root, "processor")
  tiny.write_tokenizer(processor)
  tiny.write_image_processor_config(processor, max_pixels=112 * 112)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = load_config_file(os.path.join(repo, "configs", "sft.py") + f":tiny,processor={processor}")
  config.train.num_steps = 1000
  config.optim.update(warmup_ratio=0.0, schedule="constant")
  mesh = mesh_lib.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  setup = sft.build(config, mesh, num_steps=config.train.num_steps)
  config.export.hf_dir = os.path.join(root, "hf")
  hf_dir = sft.export(config, root, setup.state.params, setup.backbone)
  batch = _batch(setup.backbone.action_vocab, args.batch, args.seq)
  tokens = args.batch * args.seq

  # ---- ours: the state advances each call, as in training
  global_batch = sharding_lib.global_batch(batch, mesh)
  carry = {"state": setup.state}

  def ours_step():
    carry["state"], metrics = setup.step(carry["state"], global_batch)
    jax.block_until_ready(metrics)

  # ---- transformers + torch AdamW
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa")
  hf.train()
  for name, p in hf.named_parameters():
    p.requires_grad_(not (("visual" in name) and ("merger" not in name)))
  trainable = [p for p in hf.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(trainable, lr=config.optim.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  ids = torch.as_tensor(batch["input_ids"], dtype=torch.long)
  inputs = dict(input_ids=ids, attention_mask=torch.as_tensor(batch["attention_mask"], dtype=torch.long),
                pixel_values=torch.as_tensor(batch["pixel_values"]),
                image_grid_thw=torch.as_tensor(batch["image_grid_thw"], dtype=torch.long),
                mm_token_type_ids=(ids == setup.backbone.model.config.image_token_id).int())
  weights = torch.as_tensor(batch["loss_mask"][:, 1:], dtype=torch.float32)

  def torch_step():
    logits = hf(**inputs).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                           reduction="none").reshape(weights.shape)
    loss = (ce * weights).sum() / weights.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    return loss

  times = interleaved({"ours": ours_step, "torch": torch_step}, args.rounds)
  ours, theirs = times["ours"], times["torch"]
  print(f"batch {args.batch} x {args.seq} tokens (1 image of 16 tokens per row), {args.threads} threads, "
        f"jax {jax.__version__} / torch {torch.__version__}; {args.rounds} interleaved rounds, {load_line()}")
  for label, t in (("ours  (jax, jitted SFT step)", ours), ("torch (transformers + AdamW)", theirs)):
    print(f"{label}:  median {t['median'] * 1e3:8.1f} ms/step (min {t['min'] * 1e3:.1f})  "
          f"{tokens / t['median']:9.0f} tokens/s")
  print(f"ratio ours / torch (tokens/s):  {theirs['median'] / ours['median']:8.2f}")


if __name__ == "__main__":
  main()
