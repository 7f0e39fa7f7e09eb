"""Sample builders on top of the pipeline: FAST SFT, GRPO prompts and VLA samples, with and
without the backbone processor tokenising them."""

import numpy as np
import pytest

from roboalign_jax import data
from roboalign_jax.data import pipeline, samples
from roboalign_jax.fast import FASTTokenizer, fast_ids_to_text
import tiny_qwen

HORIZON = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("samples")
  path = data.write_fixture("libero", str(root / "rlds"), 3, 0, episode_length=(20, 26))
  base = dict(datasets=[data.dataset_entry("libero", path)], cache_dir=str(root / "cache"), global_batch_size=2,
              progress=False, action_horizon=HORIZON)
  handles = pipeline.open_datasets(data.data_config(**base))
  fast = FASTTokenizer.fit(pipeline.action_chunks(handles, HORIZON), vocab_size=256)
  fast.save(str(root / "fast"))
  return {"base": base, "fast_dir": str(root / "fast"), "qwen_dir": tiny_qwen.processor_dir(224 * 224), "fast": fast}


def batch_of(setup, **overrides):
  config = data.data_config(**{**setup["base"], **overrides})
  return next(iter(data.make_dataset(config, process_index=0, process_count=1)))


def test_fast_sft_conversation(setup):
  batch = batch_of(setup, sample="fast_sft", fast_tokenizer_dir=setup["fast_dir"])
  for messages, fast_ids, actions in zip(batch["messages"], batch["fast_ids"], batch["actions"]):
    assert messages[0] == {"role": "system", "content": samples.SYSTEM_PROMPT}
    assert samples.SYSTEM_PROMPT == "You are an embodied vision-language robotic assistant for multi-object manipulation."
    image, text = messages[1]["content"]
    assert image["image"].shape == (224, 224, 3) and image["image"].dtype == np.uint8
    assert text["text"].startswith("Your current task is put the ")
    assert text["text"].endswith(". Output the robot's actions to perform this task through Fast tokens.")
    assert messages[2] == {"role": "assistant", "content": fast_ids_to_text(fast_ids)}
    decoded = setup["fast"].decode([fast_ids], horizon=HORIZON, action_dim=7)[0]
    np.testing.assert_allclose(decoded, actions, atol=0.1)  # FAST's rounding error at scale 10


def test_fast_sft_tokenised_with_the_backbone_processor(setup):
  batch = batch_of(setup, sample="fast_sft", fast_tokenizer_dir=setup["fast_dir"], processor_dir=setup["qwen_dir"],
                   max_seq_len=512)
  builder = samples.make_builder(data.data_config(**{**setup["base"], "sample": "fast_sft",
                                                     "fast_tokenizer_dir": setup["fast_dir"],
                                                     "processor_dir": setup["qwen_dir"]}))
  tokenizer, vocab = builder.tokenizing.processor.tokenizer, builder.tokenizing.action_vocab
  assert batch["input_ids"].shape == (2, 512) and batch["input_ids"].dtype == np.int32
  assert batch["image_grid_thw"].tolist() == [[1, 16, 16]] * 2  # 224 x 224 -> 16 x 16 patches
  assert batch["pixel_values"].shape == (2 * 256, 1176)
  for b in range(2):
    ids, mask, loss = batch["input_ids"][b], batch["attention_mask"][b], batch["loss_mask"][b]
    assert (ids == tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum() == 64
    target = np.asarray(vocab.wrap(batch["fast_ids"][b]))
    supervised = ids[loss == 1]
    np.testing.assert_array_equal(supervised[:len(target)], target)  # the action tokens, then the turn end
    assert tokenizer.decode(supervised[len(target):]) == "<|im_end|>\n"
    real = ids[mask == 1]
    prompt_end = len(real) - len(supervised)
    assert tokenizer.decode(real[:prompt_end]).endswith("<|im_start|>assistant\n")
    assert mask[:len(real)].all() and not mask[len(real):].any()  # right padding for training


def test_grpo_prompt(setup):
  batch = batch_of(setup, sample="grpo", fast_tokenizer_dir=setup["fast_dir"], processor_dir=setup["qwen_dir"])
  assert samples.GRPO_SYSTEM_PROMPT == (
      "You are an embodied vision-language robotic assistant for multi-object manipulation. The assistant first "
      "thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
      "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively.")
  assert batch["messages"][0][0]["content"] == samples.GRPO_SYSTEM_PROMPT
  assert len(batch["messages"][0]) == 2  # no answer in a prompt
  # The reward's payload: the chunk's FAST ids.
  for b in range(2):
    targets = batch["target"][b]["fast_ids"]
    assert len(targets) > 0 and all(isinstance(i, int) and i >= 0 for i in targets)
  # Left padding: every prompt ends at the right edge, where generation continues.
  assert batch["attention_mask"][:, -1].all()


def test_vla_sample(setup):
  batch = batch_of(setup, sample="vla")
  assert batch["images"].shape == (2, 2, 224, 224, 3) and batch["images"].dtype == np.uint8
  assert batch["image_mask"].all()
  assert batch["state"].shape == (2, 64) and batch["state"].dtype == np.float32
  np.testing.assert_array_equal(batch["state_mask"][0], np.arange(64) < 8)
  assert not batch["state"][:, 8:].any()
  assert batch["actions"].shape == (2, HORIZON, 32) and batch["action_mask"].shape == (2, HORIZON, 32)
  assert not batch["action_mask"][:, :, 7:].any() and not batch["actions"][:, :, 7:].any()
  assert batch["action_mask"][:, 0, :7].all()


def test_unknown_sample_kind(setup):
  with pytest.raises(ValueError, match="unknown config.data.sample 'sft'"):
    samples.make_builder(data.data_config(sample="sft"))
  with pytest.raises(ValueError, match="needs config.data.fast_tokenizer_dir"):
    samples.make_builder(data.data_config(sample="grpo"))
