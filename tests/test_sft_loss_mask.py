"""The SFT loss sees exactly the assistant tokens of a multi-turn conversation with an image."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from roboalign_jax.data.samples import Tokenizing
from roboalign_jax.models.qwen2_5_vl import Qwen2_5_VL, Qwen2_5_VLConfig, tiny
from roboalign_jax.train import sft, sft_batches
import tiny_qwen

ANSWERS = ("a red block and a blue bowl", "<action_start><action_3><action_17><action_end>")


@pytest.fixture(scope="module")
def tokenizing():
  return Tokenizing(tiny_qwen.processor_dir(112 * 112))


def _messages():
  image = np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
  return [{"role": "system", "content": "You control a robot."},
          {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is there?"}]},
          {"role": "assistant", "content": ANSWERS[0]},
          {"role": "user", "content": "Now act: put the red block in the bowl."},
          {"role": "assistant", "content": ANSWERS[1]}], [image]


def test_loss_mask_is_exactly_the_assistant_turns(tokenizing):
  messages, images = _messages()
  sample = tokenizing.conversation(messages, images)
  ids, mask = sample["input_ids"], sample["loss_mask"]
  tok = tokenizing.processor.tokenizer
  # Independent expectation: each assistant answer followed by its end of turn, tokenised alone.
  expected = [tok(answer + "<|im_end|>\n", add_special_tokens=False)["input_ids"] for answer in ANSWERS]
  runs = np.split(np.arange(len(ids)), np.flatnonzero(np.diff(mask) != 0) + 1)
  supervised = [ids[r].tolist() for r in runs if mask[r[0]] == 1]
  assert supervised == expected
  # The prompt side (system, user turns, image pads, the "assistant\n" headers) is never supervised.
  assert not mask[ids == 12].any() and (ids == 12).sum() == 16  # 112x112 -> 16 image tokens
  header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
  starts = [i for i in range(len(ids)) if ids[i:i + len(header)].tolist() == header]
  assert len(starts) == 2 and all(mask[s:s + len(header)].sum() == 0 for s in starts)
  # The action tokens are single tokens (the vocabulary was extended).
  assert supervised[1][0] == tokenizing.action_vocab.action_start_id
  assert supervised[1][1:3] == [tokenizing.action_vocab.first_action_token_id + k for k in (3, 17)]


def test_sft_loss_is_cross_entropy_over_masked_positions_only(tokenizing):
  messages, images = _messages()
  sample = tokenizing.conversation(messages, images)
  batch = sft_batches.shape_batch(tokenizing.collate_tokens([sample, sample], left=False), pad_multiple=32)
  batch["loss_mask"][1] = 0  # the second row contributes nothing
  config = Qwen2_5_VLConfig.from_variant("tiny")
  config = config.replace(text=config.text.__class__(**{**config.text.__dict__, "vocab_size": 3200}))
  model = Qwen2_5_VL(config)
  params = tiny.random_params(config, seed=1)
  loss, metrics = sft.sft_loss(params, model, jax.tree.map(jnp.asarray, batch),
                               action_vocab=tokenizing.action_vocab, frame_patches=64)
  inputs = {k: jnp.asarray(v) for k, v in batch.items() if k != "loss_mask"}
  logits = model.apply({"params": params}, **inputs).logits  # packed vision attention: an independent path
  ids, mask = batch["input_ids"][0], batch["loss_mask"][0]
  positions = np.flatnonzero(mask[1:])  # position t predicts token t + 1
  ce = optax.softmax_cross_entropy_with_integer_labels(logits[0, positions], ids[positions + 1])
  np.testing.assert_allclose(loss, ce.mean(), rtol=1e-5)
  assert metrics["supervised_tokens"] == mask.sum() == len(positions)
  # Real tokens over all slots, both rows.
  np.testing.assert_allclose(metrics["padding_fraction"], 1 - batch["attention_mask"].mean(), rtol=1e-6)
