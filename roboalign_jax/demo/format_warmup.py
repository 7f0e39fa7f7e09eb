"""A short supervised warm-up on the GRPO answer format, for tiny CPU runs.

GRPO only improves what the policy already samples: the reward needs responses of the form
`<think>…</think><answer><action_start>…<action_end></answer>`. At paper scale Stage 1's reasoning
data (zero-shot chain of thought) teaches that form; a tiny model trained for a minute does not
pick it up, so tests and `make demo` give it a few hundred supervised steps on exactly that form
with the target FAST tokens as the answer. Stopped early, the model emits the format but knows
the actions only partly, which leaves GRPO something to improve.

    run(init_dir, data, out_dir, steps=150)   # HF dir in -> HF dir out (same tokenizer/processor)

Single device, unsharded: a tool for tiny models, not a trainer for real ones.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from roboalign_jax.data.pipeline import make_dataset
from roboalign_jax.fast.vocab import ActionVocab
from roboalign_jax.models import backbone as backbone_lib
from roboalign_jax.models.sampling import token_logprobs

DEFAULT_REASONING = "move"


def response_ids(fast_ids, tokenizer, action_vocab: ActionVocab, reasoning: str = DEFAULT_REASONING) -> list[int]:
  """Token ids of `<think>{reasoning}</think><answer><action_start>…<action_end></answer><|im_end|>`."""
  head = tokenizer(f"<think>{reasoning}</think><answer>", add_special_tokens=False)["input_ids"]
  tail = tokenizer("</answer><|im_end|>", add_special_tokens=False)["input_ids"]
  return [*head, *action_vocab.wrap(fast_ids), *tail]


def loss_fn(params, model, batch, *, prompt_len: int, frame_patches: int):
  """Mean negative log-likelihood of the response tokens (after `prompt_len` prompt tokens)."""
  pixels = batch["pixel_values"]
  out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                    pixels.reshape(-1, pixels.shape[-1]), batch["image_grid_thw"], frame_patches=frame_patches)
  logp = token_logprobs(out.logits[:, prompt_len - 1:-1], batch["input_ids"][:, prompt_len:])
  mask = batch["response_mask"]
  return -(logp * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def run(init_dir: str, data: ml_collections.ConfigDict, out_dir: str, *, steps: int, lr: float = 3e-3,
        response_len: int = 48, reasoning: str = DEFAULT_REASONING) -> list[float]:
  """Trains the HF model in `init_dir` on `data`'s GRPO prompts (`data.sample == "grpo"`,
  prompts padded to `data.max_seq_len`) answered in the GRPO format; exports to `out_dir`.
  Returns the loss of every step. Deterministic: `data.seed` orders the batches, nothing else is drawn."""
  if data.sample != "grpo" or data.max_seq_len <= 0:
    raise ValueError("format_warmup.run: data must be GRPO prompts (sample='grpo') padded to a fixed max_seq_len")
  if steps < 1:
    raise ValueError(f"format_warmup.run: steps must be >= 1, got {steps}")
  backbone = backbone_lib.load_dir(init_dir, family_name=data.get("model_family", "qwen2_5_vl"))
  data = ml_collections.ConfigDict(data.to_dict())
  data.processor_dir = data.processor_dir or init_dir
  batches = iter(make_dataset(data, "train", process_index=0, process_count=1))
  tx = optax.adamw(lr, weight_decay=0.0)
  params = backbone.params
  opt_state = tx.init(params)

  @functools.partial(jax.jit, static_argnames=("frame_patches",))
  def step_fn(params, opt_state, batch, frame_patches):
    loss, grads = jax.value_and_grad(loss_fn)(params, backbone.model, batch, prompt_len=data.max_seq_len,
                                              frame_patches=frame_patches)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(steps):
    batch = _sequences(next(batches), backbone.tokenizer, backbone.action_vocab, response_len, reasoning)
    grid = batch["image_grid_thw"]
    params, opt_state, loss = step_fn(params, opt_state, batch, int(grid[0, 1] * grid[0, 2]))
    losses.append(float(loss))
  backbone.export(params, out_dir)
  return losses


def _sequences(batch: dict[str, Any], tokenizer, action_vocab: ActionVocab, response_len: int,
               reasoning: str) -> dict[str, np.ndarray]:
  """GRPO prompt batch -> prompt + formatted answer, right-padded to `response_len` answer tokens."""
  b = batch["input_ids"].shape[0]
  answers = np.full((b, response_len), tokenizer.pad_token_id, np.int32)
  mask = np.zeros((b, response_len), np.float32)
  for i in range(b):
    ids = response_ids(batch["target"][i]["fast_ids"], tokenizer, action_vocab, reasoning)
    if len(ids) > response_len:
      raise ValueError(f"format warm-up answer of {len(ids)} tokens exceeds response_len={response_len}")
    answers[i, :len(ids)] = ids
    mask[i, :len(ids)] = 1.0
  pixels = np.asarray(batch["pixel_values"], np.float32)
  return {"input_ids": np.concatenate([batch["input_ids"], answers], 1),
          "attention_mask": np.concatenate([batch["attention_mask"], mask.astype(np.int32)], 1),
          "response_mask": mask, "pixel_values": pixels.reshape(b, -1, pixels.shape[-1]),
          "image_grid_thw": np.asarray(batch["image_grid_thw"], np.int32)}
