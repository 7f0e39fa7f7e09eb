"""GRPO rollout throughput on CPU: `rl.rollout.generate` (JAX) vs transformers `generate`
(torch, do_sample=True) on the same tiny checkpoint, batch, prompt and new-token lengths.

Both sample B prompts x G samples at temperature 1, top-p 1, no top-k, exactly N new tokens
(no EOS stop), from left-padded prompts that each hold one 16-token image. The two sides run
interleaved (ours, torch, ours, torch, ...; compile and warm-up excluded); prints generated
tokens/s (B*G*N / median wall time), the minimums, the ratio of the medians and the load average.

The defaults are the demo's rollout batch (`configs/grpo.py:tiny`: 8 prompts x 4 samples, prompts
padded to data.max_seq_len = 288, at most 28 new tokens); the paper's 5 samples per prompt with a
longer response, scaled to a CPU, is `--prompts 8 --samples 5 --prompt_len 96 --new_tokens 128`.

`--profile` also prints where our rollout's time goes, per part of the model and sampler
(`timing.xla_profile`).

    .venv/bin/python benchmarks/rollout_cpu.py [--prompts 8 --samples 4 --prompt_len 288 --new_tokens 28 --profile]
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile

import numpy as np
from timing import interleaved, load_line, print_profile, xla_profile


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--samples", type=int, default=4)
  ap.add_argument("--prompt_len", type=int, default=288)
  ap.add_argument("--new_tokens", type=int, default=28)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--profile", action="store_true", help="print our rollout's time per model part")
  args = ap.parse_args()

  import torch
  torch.set_num_threads(args.threads)
  import jax
  from transformers import Qwen2_5_VLForConditionalGeneration

  from roboalign_jax.models import qwen2_5_vl
  from roboalign_jax.models.qwen2_5_vl import tiny
  from roboalign_jax.rl import rollout

  ckpt = tiny.write_checkpoint(tempfile.mkdtemp(prefix="rollout_bench_"))
  model, params = qwen2_5_vl.load_pretrained(ckpt)
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, attn_implementation="sdpa").eval()
  config = model.config

  b, g, t, n = args.prompts, args.samples, args.prompt_len, args.new_tokens
  rng = np.random.default_rng(0)
  ids = np.zeros((b, t), np.int32)
  mask = np.zeros((b, t), np.int32)
  for row in range(b):  # left padding: row r has 2r pad tokens
    length = t - 2 * row
    text = rng.integers(20, 500, size=length)
    text[1] = config.vision_start_token_id
    text[2:18] = config.image_token_id
    text[18] = config.vision_end_token_id
    ids[row, t - length:] = text
    mask[row, t - length:] = 1
  grid = np.array([[1, 8, 8]] * b, np.int32)
  pixels = rng.normal(size=(b * 64, config.vision.patch_dim)).astype(np.float32)

  key = jax.random.key(0)

  def ours():
    out = rollout.generate(model, params, ids, mask, pixels, grid, max_new_tokens=n, temperature=1.0, top_p=1.0,
                           top_k=0, num_samples=g, rng=key)
    return jax.block_until_ready(out)
  out = ours()
  assert out.tokens.shape == (b * g, n) and bool(out.mask.all())

  tids = torch.as_tensor(ids, dtype=torch.long)
  tkw = dict(attention_mask=torch.as_tensor(mask, dtype=torch.long), pixel_values=torch.as_tensor(pixels),
             image_grid_thw=torch.as_tensor(grid, dtype=torch.long),
             mm_token_type_ids=(tids == config.image_token_id).int())

  def theirs():
    with torch.no_grad():
      seq = hf.generate(input_ids=tids, **tkw, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                        num_return_sequences=g, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    assert seq.shape == (b * g, t + n)
  times = interleaved({"ours": ours, "torch": theirs}, args.rounds)
  ours_s, torch_s = times["ours"]["median"], times["torch"]["median"]

  tokens = b * g * n
  print(f"device: {jax.devices()[0].platform}, torch threads {args.threads}; {b} prompts x {g} samples, "
        f"prompt {t} tokens (16-token image), {n} new tokens, sampling at temperature 1; "
        f"{args.rounds} interleaved rounds, {load_line()}")
  print(f"rollout: ours {tokens / ours_s:8.0f} tok/s ({ours_s:.3f} s, min {times['ours']['min']:.3f})   "
        f"torch generate {tokens / torch_s:8.0f} tok/s ({torch_s:.3f} s, min {times['torch']['min']:.3f})   "
        f"ratio ours/torch {torch_s / ours_s:.2f}x")
  if args.profile:
    from roboalign_jax.models import sampling
    # The sampler's jitted program with generate's static arguments bound (top-p and top-k off).
    program = jax.jit(functools.partial(
        sampling._rollout, model=model, max_new_tokens=n, num_samples=g, greedy=False, top_k=0, use_top_p=False,
        pad_id=0, mesh=None, rules=None, prefill_rules=None))
    inputs = (params, ids, mask, pixels, grid, np.float32(1.0), np.float32(1.0), key, sampling._eos_ids(None))
    # 'other' holds the sampler's noise, argmax and the decode loop's bookkeeping.
    print_profile(xla_profile(program, inputs), "rollout")


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
