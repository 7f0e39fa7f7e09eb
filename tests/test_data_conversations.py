"""LLaVA-format conversation sources: the fixture writer's VQA/reasoning sets, validation of bad
records, tokenisation with loss on assistant turns only, and mixing with robot FAST samples."""

import json

import numpy as np
import pytest

from roboalign_jax import data
from roboalign_jax.data import conversations, fixtures
from roboalign_jax.data.conversations import ConversationSource
from roboalign_jax.data.errors import DataError
import tiny_qwen


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
  root = tmp_path_factory.mktemp("conv")
  paths = conversations.write_conversation_fixture(str(root / "conv"), num_vqa=8, num_reasoning=4, seed=0)
  return {**paths, "root": root, "qwen": tiny_qwen.processor_dir(224 * 224)}


def test_fixture_answers_are_verifiable(conv):
  vqa = ConversationSource(conv["vqa"])
  assert len(vqa) == 8
  for i in range(len(vqa)):
    record = vqa.record(i)
    sample = vqa[i]
    assert record["conversations"][-1]["value"] == record["answer"]
    assert len(sample["images"]) == (2 if i % 4 == 3 else 1)
    assert all(im.shape == (256, 256, 3) and im.dtype == np.uint8 for im in sample["images"])
  # Recompute one answer from the scene the fixture rendered: the leftmost object's colour.
  for i in range(8):
    rng = np.random.default_rng([0, 0, i])
    scene = fixtures.sample_scene(rng)
    question = vqa.record(i)["conversations"][0]["value"]
    if "leftmost" in question:
      assert vqa.record(i)["answer"] == min(scene["objects"], key=lambda o: o["xy"][0])["colour"]
  reasoning = ConversationSource(conv["reasoning"])
  for i in range(len(reasoning)):
    text = reasoning.record(i)["conversations"][-1]["value"]
    answer = reasoning.record(i)["answer"]
    assert text.startswith("<think>") and text.endswith(f"</think><answer>{answer}</answer>")


def test_messages_put_images_where_the_placeholders_are(conv):
  sample = ConversationSource(conv["vqa"])[3]  # a two-image record
  user = sample["messages"][0]
  assert user["role"] == "user"
  assert [item["type"] for item in user["content"]] == ["image", "image", "text"]
  assert user["content"][0]["image"] is sample["images"][0]
  assert sample["messages"][1] == {"role": "assistant", "content": sample["answer"]}


def test_bad_records_name_file_and_line(tmp_path, conv):
  lines = [
      {"image": "images/vqa_00000.png", "conversations": [{"from": "human", "value": "no placeholder"},
                                                          {"from": "gpt", "value": "x"}]},
      {"conversations": [{"from": "gpt", "value": "starts with gpt"}]},
      {"image": "images/missing.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                        {"from": "gpt", "value": "a"}]},
      {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]},
  ]
  path = conv["root"] / "conv" / "bad.jsonl"
  path.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
  source = ConversationSource(str(path))
  expected = ["episode 0: 0 <image> placeholders but 1 images", "episode 1: turn 0 is",
              "episode 2: image .*missing.png does not exist", "episode 3: turn 1 has an empty value",
              "episode 4: line is not valid JSON"]
  for i, pattern in enumerate(expected):
    with pytest.raises(DataError, match=f"dataset 'bad.jsonl', {pattern}"):
      source[i]


def test_tokenised_conversation_supervises_only_answers(conv):
  from roboalign_jax.data.samples import Tokenizing
  tokenizing = Tokenizing(conv["qwen"])
  sample = ConversationSource(conv["reasoning"])[0]
  two_turns = sample["messages"] + [{"role": "user", "content": "Are you sure?"},
                                    {"role": "assistant", "content": "yes"}]
  out = tokenizing.conversation(two_turns, sample["images"])
  tokenizer = tokenizing.processor.tokenizer
  supervised = tokenizer.decode(out["input_ids"][out["loss_mask"] == 1])
  assert supervised == sample["messages"][1]["content"] + "<|im_end|>\n" + "yes<|im_end|>\n"
  assert out["image_grid_thw"].tolist() == [[1, 16, 16]]  # 256 x 256 -> 224 x 224 under max_pixels = 224^2
  assert out["pixel_values"].shape == (16 * 16, 1176)


def test_conversations_mix_with_robot_fast_samples(conv, tmp_path):
  from roboalign_jax.data import pipeline
  from roboalign_jax.fast import FASTTokenizer
  path = data.write_fixture("bridge", str(tmp_path / "rlds"), 2, 0, episode_length=(20, 24))
  base = dict(datasets=[data.dataset_entry("bridge", path, weight=1.0)], cache_dir=str(tmp_path / "cache"),
              progress=False, action_horizon=5, global_batch_size=4)
  handles = pipeline.open_datasets(data.data_config(**base))
  FASTTokenizer.fit(pipeline.action_chunks(handles, 5), vocab_size=256).save(str(tmp_path / "fast"))
  config = data.data_config(**base, sample="fast_sft", fast_tokenizer_dir=str(tmp_path / "fast"),
                            processor_dir=conv["qwen"], max_seq_len=512,
                            conversations=[{"path": conv["vqa"], "weight": 1.0},
                                           {"path": conv["reasoning"], "weight": 2.0}])
  it = iter(data.make_dataset(config, process_index=0, process_count=1))
  sources = []
  for _ in range(3):
    batch = next(it)
    assert batch["input_ids"].shape == (4, 512) and batch["loss_mask"].shape == (4, 512)
    assert (batch["loss_mask"].sum(1) > 0).all()
    sources += batch["source"]
  counts = {name: sources.count(name) for name in set(sources)}
  assert counts == {"bridge": 3, "vqa.jsonl": 3, "reasoning.jsonl": 6}
