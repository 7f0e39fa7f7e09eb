"""A tiny Qwen-VL backbone on CPU: ours (JAX/Flax) vs transformers (torch), same weights, either
family of the registry (Qwen2.5-VL or Qwen3-VL).

Measures forward+backward tokens/s (a next-token cross-entropy on a text+image batch) and greedy
decode tokens/s (prefill + N new tokens), timed interleaved (ours, torch, ours, torch, ...), and
prints medians, minimums, the ours / torch ratio of the medians and the load average.
`--profile` also prints where our forward+backward's time goes, per part of the model
(`timing.xla_profile`).

    .venv/bin/python benchmarks/backbone_cpu.py [--family qwen3_vl --batch 4 --seq 256 --new_tokens 64 --threads 2 --profile]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import tempfile

import numpy as np
from timing import interleaved, load_line, print_profile, xla_profile

# family -> (our config class, transformers' config class, transformers' model class)
CLASSES = {"qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
           "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLConfig", "Qwen3VLForConditionalGeneration")}


def _report(label: str, tokens: int, times: dict) -> None:
  ours, torch_ = times["ours"], times["torch"]
  print(f"{label}: ours {tokens / ours['median']:9.0f} tok/s (min {ours['min'] * 1e3:.1f} ms)   "
        f"torch {tokens / torch_['median']:9.0f} tok/s (min {torch_['min'] * 1e3:.1f} ms)   "
        f"ratio ours/torch {torch_['median'] / ours['median']:.2f}x")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--family", default="qwen2_5_vl", choices=sorted(CLASSES))
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--prompt", type=int, default=64)
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--profile", action="store_true", help="print our forward+backward's time per model part")
  args = ap.parse_args()

  import torch
  torch.set_num_threads(args.threads)
  import jax
  import jax.numpy as jnp
  import transformers

  ours = importlib.import_module(f"roboalign_jax.models.{args.family}")  # load_pretrained + config class
  ours_config, hf_config, hf_model = CLASSES[args.family]
  config = getattr(ours, ours_config).from_variant("tiny")
  torch.manual_seed(0)
  hf = getattr(transformers, hf_model)._from_config(getattr(transformers, hf_config)(**config.to_hf_dict()),
                                                    attn_implementation="sdpa")
  ckpt = tempfile.mkdtemp(prefix="backbone_bench_")
  hf.save_pretrained(ckpt)
  model, params = ours.load_pretrained(ckpt)

  rng = np.random.default_rng(0)
  b, t = args.batch, args.seq
  grid = np.array([[1, 16, 16]] * b, np.int32)  # one image of 64 merged tokens per row
  n_img = 64
  ids = rng.integers(20, 500, size=(b, t)).astype(np.int32)
  ids[:, 1] = config.vision_start_token_id
  ids[:, 2:2 + n_img] = config.image_token_id
  ids[:, 2 + n_img] = config.vision_end_token_id
  pixels = rng.normal(size=(b * 256, config.vision.patch_dim)).astype(np.float32)

  # ---- forward + backward ----
  def loss_fn(p, ids, pixels, grid):
    # Equal grids: per-image vision attention, as the trainers use it (config.model.per_image_vision).
    logits = model.apply({"params": p}, ids, None, pixels, grid, frame_patches=256).logits[:, :-1]
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.take_along_axis(logp, ids[:, 1:, None], -1).mean()

  grad_fn = jax.jit(jax.value_and_grad(loss_fn))
  jargs = (params, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(grid))

  tids = torch.as_tensor(ids, dtype=torch.long)
  tkw = dict(pixel_values=torch.as_tensor(pixels), image_grid_thw=torch.as_tensor(grid, dtype=torch.long),
             mm_token_type_ids=(tids == config.image_token_id).int())

  def torch_fb():
    hf.zero_grad(set_to_none=True)
    logits = hf(input_ids=tids, **tkw).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tids[:, 1:].reshape(-1))
    loss.backward()

  hf.train()
  fb = interleaved({"ours": lambda: jax.block_until_ready(grad_fn(*jargs)), "torch": torch_fb}, args.rounds)
  hf.eval()

  # ---- greedy decode ----
  pt = args.prompt
  p_ids = ids[:, :pt].copy()
  steps = args.new_tokens
  prefill = jax.jit(functools.partial(model.apply, method=model.prefill, max_length=pt + steps, frame_patches=64))

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

  # The prompt cuts the 64-token image block: keep a complete 16-token image instead.
  p_grid = np.array([[1, 8, 8]] * b, np.int32)
  p_ids[:, 2:2 + 16] = config.image_token_id
  p_ids[:, 18] = config.vision_end_token_id
  p_ids[:, 19:] = rng.integers(20, 500, size=(b, pt - 19))
  p_pixels = rng.normal(size=(b * 64, config.vision.patch_dim)).astype(np.float32)
  gargs = (params, jnp.asarray(p_ids), jnp.asarray(p_pixels), jnp.asarray(p_grid))
  ours_tokens = np.asarray(generate(*gargs))

  tp = torch.as_tensor(p_ids, dtype=torch.long)
  gkw = dict(pixel_values=torch.as_tensor(p_pixels), image_grid_thw=torch.as_tensor(p_grid, dtype=torch.long),
             mm_token_type_ids=(tp == config.image_token_id).int())

  def torch_gen():
    with torch.no_grad():
      return hf.generate(input_ids=tp, attention_mask=torch.ones_like(tp), **gkw, do_sample=False,
                         max_new_tokens=steps, min_new_tokens=steps, pad_token_id=0)
  same = np.array_equal(torch_gen()[:, pt:].numpy(), ours_tokens)
  gen = interleaved({"ours": lambda: jax.block_until_ready(generate(*gargs)), "torch": torch_gen}, args.rounds)

  print(f"{args.family} tiny, device {jax.devices()[0].platform}, torch threads {args.threads}, batch {b}, "
        f"{args.rounds} interleaved rounds, {load_line()}")
  _report(f"forward+backward  seq {t}", b * t, fb)
  _report(f"greedy decode {steps} new tokens after {pt} (same tokens: {same})", b * steps, gen)
  if args.profile:
    print_profile(xla_profile(grad_fn, jargs), "forward+backward")


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
