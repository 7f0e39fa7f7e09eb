"""Qwen2.5-VL tiny checkpoint on CPU: ours (JAX/Flax) vs transformers (torch), same weights.

Measures forward+backward tokens/s (a next-token cross-entropy on a text+image batch) and greedy
decode tokens/s (prefill + N new tokens), and prints ours / torch ratios.

    .venv/bin/python benchmarks/qwen2_5_vl_cpu.py [--batch 4 --seq 256 --new_tokens 64 --threads 2]
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile

import numpy as np
from timing import mean_seconds



def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--prompt", type=int, default=64)
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--threads", type=int, default=2)
  args = ap.parse_args()

  import torch
  torch.set_num_threads(args.threads)
  import jax
  import jax.numpy as jnp
  from transformers import Qwen2_5_VLConfig as HFConfig
  from transformers import Qwen2_5_VLForConditionalGeneration

  from roboalign_jax.models import qwen2_5_vl

  config = qwen2_5_vl.Qwen2_5_VLConfig.from_variant("tiny")
  torch.manual_seed(0)
  hf = Qwen2_5_VLForConditionalGeneration._from_config(HFConfig(**config.to_hf_dict()), attn_implementation="sdpa")
  ckpt = tempfile.mkdtemp(prefix="qwen_bench_")
  hf.save_pretrained(ckpt)
  model, params = qwen2_5_vl.load_pretrained(ckpt)

  rng = np.random.default_rng(0)
  b, t = args.batch, args.seq
  grid = np.array([[1, 16, 16]] * b, np.int32)  # one 224x224 image (64 tokens) per row
  n_img = 64
  ids = rng.integers(20, 500, size=(b, t)).astype(np.int32)
  ids[:, 1] = config.vision_start_token_id
  ids[:, 2:2 + n_img] = config.image_token_id
  ids[:, 2 + n_img] = config.vision_end_token_id
  pixels = rng.normal(size=(b * 256, config.vision.patch_dim)).astype(np.float32)

  # ---- forward + backward ----
  def loss_fn(p, ids, pixels, grid):
    logits = model.apply({"params": p}, ids, None, pixels, grid).logits[:, :-1]
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.take_along_axis(logp, ids[:, 1:, None], -1).mean()

  grad_fn = jax.jit(jax.value_and_grad(loss_fn))
  jargs = (params, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(grid))
  jax_fb = mean_seconds(lambda: jax.block_until_ready(grad_fn(*jargs)), args.iters)

  tids = torch.as_tensor(ids, dtype=torch.long)
  tkw = dict(pixel_values=torch.as_tensor(pixels), image_grid_thw=torch.as_tensor(grid, dtype=torch.long),
             mm_token_type_ids=(tids == config.image_token_id).int())
  hf.train()

  def torch_fb():
    hf.zero_grad(set_to_none=True)
    logits = hf(input_ids=tids, **tkw).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tids[:, 1:].reshape(-1))
    loss.backward()
  torch_fb_s = mean_seconds(torch_fb, args.iters)
  hf.eval()

  # ---- greedy decode ----
  pt = args.prompt
  p_ids = ids[:, :pt].copy()
  steps = args.new_tokens
  prefill = jax.jit(functools.partial(model.apply, method=model.prefill, max_length=pt + steps))

  @jax.jit
  def generate(p, ids, pixels, grid):
    logits, cache = prefill({"params": p}, ids, None, pixels, grid)

    def body(carry, _):
      logits, cache = carry
      tok = jnp.argmax(logits, -1).astype(jnp.int32)
      logits, cache = model.apply({"params": p}, tok, cache, method=model.decode_step)
      return (logits, cache), tok
    _, toks = jax.lax.scan(body, (logits, cache), None, length=steps)
    return toks.T

  # pt=64 cuts the image block (64 pads from position 2): keep a complete 16-token image instead.
  p_grid = np.array([[1, 8, 8]] * b, np.int32)
  p_ids[:, 2:2 + 16] = config.image_token_id
  p_ids[:, 18] = config.vision_end_token_id
  p_ids[:, 19:] = rng.integers(20, 500, size=(b, pt - 19))
  p_pixels = rng.normal(size=(b * 64, config.vision.patch_dim)).astype(np.float32)
  gargs = (params, jnp.asarray(p_ids), jnp.asarray(p_pixels), jnp.asarray(p_grid))
  jax_gen = mean_seconds(lambda: jax.block_until_ready(generate(*gargs)), args.iters)
  ours_tokens = np.asarray(generate(*gargs))

  tp = torch.as_tensor(p_ids, dtype=torch.long)
  gkw = dict(pixel_values=torch.as_tensor(p_pixels), image_grid_thw=torch.as_tensor(p_grid, dtype=torch.long),
             mm_token_type_ids=(tp == config.image_token_id).int())

  def torch_gen():
    with torch.no_grad():
      return hf.generate(input_ids=tp, attention_mask=torch.ones_like(tp), **gkw, do_sample=False,
                         max_new_tokens=steps, min_new_tokens=steps, pad_token_id=0)
  torch_gen_s = mean_seconds(torch_gen, args.iters)
  same = np.array_equal(torch_gen()[:, pt:].numpy(), ours_tokens)

  fb_tok = b * t
  print(f"device: {jax.devices()[0].platform}, torch threads {args.threads}, batch {b}")
  print(f"forward+backward  seq {t}: ours {fb_tok / jax_fb:10.0f} tok/s   torch {fb_tok / torch_fb_s:10.0f} tok/s"
        f"   ratio ours/torch {torch_fb_s / jax_fb:.2f}x")
  print(f"greedy decode {steps} new tokens after {pt}: ours {b * steps / jax_gen:10.0f} tok/s   "
        f"torch {b * steps / torch_gen_s:10.0f} tok/s   ratio ours/torch {torch_gen_s / jax_gen:.2f}x"
        f"   (same tokens: {same})")


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
