"""RoboAlign reward: the format table, prefix accuracy (paper Eq. 2), the combined reward, and
response parsing from sampled token ids with the tiny tokenizer extended by the action tokens."""

import numpy as np
import pytest

from roboalign_jax.fast.vocab import ActionVocab, fast_ids_to_text
from roboalign_jax.rl import rewards
import tiny_qwen

ACT = fast_ids_to_text([12, 7, 2047])  # <action_start><action_12><action_7><action_2047><action_end>
GOOD = f"<think>The cup is left of the gripper.</think><answer>{ACT}</answer>"

FORMAT_CASES = [
    ("well-formed", GOOD, 1.0),
    ("newlines and whitespace between blocks",
     f"<think>Move left.\nThen lower the arm.\n</think>\n\n<answer>\n{ACT}\n</answer>", 1.0),
    ("trailing im_end", GOOD + "<|im_end|>", 1.0),
    ("trailing im_end, newline and endoftext", GOOD + " <|im_end|>\n<|endoftext|>\n", 1.0),
    ("single action token", "<think>x</think><answer><action_start><action_0><action_end></answer>", 1.0),
    ("missing think", f"<answer>{ACT}</answer>", 0.0),
    ("empty think", f"<think></think><answer>{ACT}</answer>", 0.0),
    ("whitespace-only think", f"<think> \n </think><answer>{ACT}</answer>", 0.0),
    ("unclosed think", f"<think>reasoning<answer>{ACT}</answer>", 0.0),
    ("second think block inside reasoning", f"<think>a</think>b</think><answer>{ACT}</answer>", 0.0),
    ("text after </answer>", GOOD + " done", 0.0),
    ("text after </answer> before im_end", GOOD + "ok<|im_end|>", 0.0),
    ("text before <think>", "Sure. " + GOOD, 0.0),
    ("text between </think> and <answer>", f"<think>a</think> so <answer>{ACT}</answer>", 0.0),
    ("missing <action_end>", "<think>a</think><answer><action_start><action_1><action_2></answer>", 0.0),
    ("missing <action_start>", "<think>a</think><answer><action_1><action_end></answer>", 0.0),
    ("no action tokens", "<think>a</think><answer><action_start><action_end></answer>", 0.0),
    ("extra words inside <answer>", f"<think>a</think><answer>The action is {ACT}</answer>", 0.0),
    ("extra words after the actions", f"<think>a</think><answer>{ACT} right?</answer>", 0.0),
    ("space between action tokens",
     "<think>a</think><answer><action_start><action_1> <action_2><action_end></answer>", 0.0),
    ("action id out of range", "<think>a</think><answer><action_start><action_2048><action_end></answer>", 0.0),
    ("action id with leading zero", "<think>a</think><answer><action_start><action_07><action_end></answer>", 0.0),
    ("missing </answer>", f"<think>a</think><answer>{ACT}", 0.0),
    ("two answers", f"<think>a</think><answer>{ACT}</answer><answer>{ACT}</answer>", 0.0),
    ("empty", "", 0.0),
]


@pytest.mark.parametrize("name,text,expected", FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES])
def test_format_reward_table(name, text, expected):
  assert rewards.format_reward(text) == expected


ACCURACY_CASES = [
    ("full match", [5, 9, 1, 4], [5, 9, 1, 4], 1.0),
    ("first id differs", [6, 9, 1, 4], [5, 9, 1, 4], 0.0),
    ("half", [5, 9, 0, 4], [5, 9, 1, 4], 0.5),
    ("later ids equal after a mismatch do not count", [5, 0, 1, 4], [5, 9, 1, 4], 0.25),
    ("longer than target", [5, 9, 1, 4, 8, 8, 8], [5, 9, 1, 4], 1.0),
    ("shorter than target", [5, 9, 1], [5, 9, 1, 4], 0.75),
    ("empty generation", [], [5, 9, 1, 4], 0.0),
    ("empty target", [5, 9], [], 0.0),
    ("both empty", [], [], 0.0),
]


@pytest.mark.parametrize("name,generated,target,expected", ACCURACY_CASES, ids=[c[0] for c in ACCURACY_CASES])
def test_accuracy_reward_table(name, generated, target, expected):
  assert rewards.accuracy_reward(generated, target) == pytest.approx(expected, abs=1e-12)
  # numpy arrays work the same as lists
  assert rewards.accuracy_reward(np.asarray(generated, np.int32), np.asarray(target, np.int64)) == \
      pytest.approx(expected, abs=1e-12)


def test_accuracy_reward_rejects_bad_input():
  with pytest.raises(ValueError, match="generated_action_ids"):
    rewards.accuracy_reward([1.5, 2.0], [1, 2])
  with pytest.raises(ValueError, match="target_action_ids"):
    rewards.accuracy_reward([1, 2], [[1, 2]])
  with pytest.raises(TypeError, match="str"):
    rewards.format_reward(b"<think>")


def test_roboalign_reward_combines():
  out = rewards.roboalign_reward(GOOD, [12, 7, 5], [12, 7, 2047, 3])
  assert out == {"format": 1.0, "accuracy": 0.5, "overall": 0.75}
  out = rewards.roboalign_reward("no format", [1], [1, 2])
  assert out == {"format": 0.0, "accuracy": 0.5, "overall": 0.25}


@pytest.fixture(scope="module")
def extended_tokenizer(tmp_path_factory):
  return tiny_qwen.extended_tokenizer()


def test_parse_response_keeps_special_tokens_and_reads_ids(extended_tokenizer):
  tokenizer, vocab = extended_tokenizer
  assert isinstance(vocab, ActionVocab)
  text = f"<think>pick up the red block\non the table</think>\n<answer>{ACT}</answer><|im_end|>"
  ids = tokenizer.encode(text)
  im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
  pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
  # As a rollout returns it: padded after EOS, mask True up to and including EOS.
  tokens = np.asarray(ids + [pad] * 5, np.int32)
  mask = np.arange(tokens.size) < len(ids)
  assert tokens[len(ids) - 1] == im_end
  parsed = rewards.parse_response(tokens, tokenizer, vocab, mask)
  assert parsed.text == text
  assert parsed.action_ids == [12, 7, 2047]
  assert rewards.roboalign_reward(parsed.text, parsed.action_ids, [12, 7, 2047]) == \
      {"format": 1.0, "accuracy": 1.0, "overall": 1.0}
  # Decoding that skips special tokens would lose <|im_end|> but the action tokens are not special.
  assert "<action_12>" in tokenizer.decode(ids, skip_special_tokens=True)


def test_score_responses_batch(extended_tokenizer):
  tokenizer, vocab = extended_tokenizer
  texts = [f"<think>a</think><answer>{ACT}</answer><|im_end|>",
           f"<answer>{fast_ids_to_text([12, 1])}</answer><|im_end|>",
           "<think>no action</think><|im_end|>"]
  encoded = [tokenizer.encode(t) for t in texts]
  t = max(map(len, encoded)) + 2
  tokens = np.zeros((3, t), np.int32)
  mask = np.zeros((3, t), bool)
  for i, ids in enumerate(encoded):
    tokens[i, :len(ids)] = ids
    mask[i, :len(ids)] = True
  out = rewards.score_responses(tokens, mask, [[12, 7, 2047]] * 3, tokenizer, vocab)
  np.testing.assert_allclose(out["format"], [1, 0, 0])
  np.testing.assert_allclose(out["accuracy"], [1, 1 / 3, 0])
  np.testing.assert_allclose(out["overall"], [1, 1 / 6, 0], rtol=1e-6)
  np.testing.assert_array_equal(out["length"], [len(e) for e in encoded])
  with pytest.raises(ValueError, match="2 targets for 3 responses"):
    rewards.score_responses(tokens, mask, [[1], [2]], tokenizer, vocab)
  with pytest.raises(ValueError, match="mask shape"):
    rewards.parse_response(tokens[0], tokenizer, vocab, mask[0, :-1])
