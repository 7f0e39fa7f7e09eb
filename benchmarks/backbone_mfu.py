"""Forward+backward MFU of a backbone's text decoder on one GPU (Qwen2.5-VL 3B by default; Qwen3-VL
8B with `--family qwen3_vl --variant 8b`), bf16 parameters and compute, random weights, causal LM
loss on text tokens.

    python benchmarks/backbone_mfu.py --variant 3b --seq 1024 --batch 4 [--peak_tflops 989]
    python benchmarks/backbone_mfu.py --family qwen3_vl --variant 8b --seq 1024 --batch 2 --remat

FLOPs per token: 6 x (matmul parameters of the decoder and LM head) + 12 x layers x seq x
attention width (heads x head_dim; scores and values, forward + backward, full square as computed).
"""

from __future__ import annotations

import argparse
import importlib
import time

import jax
import jax.numpy as jnp
import numpy as np

# family -> (config class, model class) in roboalign_jax.models.<family>
CLASSES = {"qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VL"), "qwen3_vl": ("Qwen3VLConfig", "Qwen3VL")}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
  ap.add_argument("--variant", default="3b")
  ap.add_argument("--seq", type=int, default=1024)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--iters", type=int, default=10)
  ap.add_argument("--remat", action="store_true")
  ap.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
  args = ap.parse_args()

  family = importlib.import_module(f"roboalign_jax.models.{args.family}")
  config_cls, model_cls = CLASSES[args.family]
  config = getattr(family, config_cls).from_variant(args.variant, dtype=jnp.bfloat16, remat=args.remat)
  model = getattr(family, model_cls)(config, param_dtype=jnp.bfloat16)
  ids, mask, pixels, grid = family.dummy_inputs(config)
  params = jax.jit(model.init)(jax.random.key(0), ids, mask, pixels, grid)["params"]
  import flax.linen as nn
  params = nn.unbox(params)
  text_params = params["language_model"]

  def loss_fn(tp, vp, ids):
    p = dict(vp, language_model=tp)
    logits = model.apply({"params": p}, ids).logits[:, :-1]
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.take_along_axis(logp, ids[:, 1:, None], -1).mean()

  rest = {k: v for k, v in params.items() if k != "language_model"}
  step = jax.jit(jax.value_and_grad(loss_fn))
  b, t = args.batch, args.seq
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.text.vocab_size, (b, t)), jnp.int32)
  loss, _ = step(text_params, rest, tokens)
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for _ in range(args.iters):
    out = step(text_params, rest, tokens)
  jax.block_until_ready(out)
  dt = (time.perf_counter() - start) / args.iters

  c = config.text
  hd = c.head_dim
  per_layer = c.hidden_size * hd * (c.num_attention_heads * 2 + c.num_key_value_heads * 2) \
      + 3 * c.hidden_size * c.intermediate_size
  n_matmul = c.num_hidden_layers * per_layer + c.hidden_size * c.vocab_size
  flops_per_token = 6 * n_matmul + 12 * c.num_hidden_layers * t * c.num_attention_heads * hd
  tok_s = b * t / dt
  mfu = tok_s * flops_per_token / (args.peak_tflops * 1e12)
  print(f"{jax.devices()[0].device_kind}: {args.family} {args.variant} batch {b} seq {t} bf16 remat={args.remat}: "
        f"{dt * 1e3:.1f} ms/step, {tok_s:,.0f} tok/s, {flops_per_token * tok_s / 1e12:.1f} TFLOP/s, "
        f"MFU {100 * mfu:.1f}% of {args.peak_tflops:.0f} (loss {float(out[0]):.3f})")


if __name__ == "__main__":
  main()
