"""The FAST id <-> MLLM token id bridge and the `<action_start>…<action_end>` text form."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from roboalign_jax.fast import vocab


def _extended_hf_tokenizer():
  """A tiny word-level HF tokenizer extended the way the backbone extends Qwen's."""
  from transformers import PreTrainedTokenizerFast
  base = Tokenizer(models.WordLevel({"[UNK]": 0, "move": 1, "left": 2}, unk_token="[UNK]"))
  base.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer = PreTrainedTokenizerFast(tokenizer_object=base, unk_token="[UNK]")
  tokenizer.add_tokens(vocab.action_token_strings(), special_tokens=True)
  return tokenizer


def test_token_strings_are_stable():
  strings = vocab.action_token_strings()
  assert vocab.ACTION_START == "<action_start>" and vocab.ACTION_END == "<action_end>"
  assert vocab.NUM_ACTION_TOKENS == 2048
  assert len(strings) == 2050 == len(set(strings))
  assert strings[:3] == ["<action_start>", "<action_end>", "<action_0>"]
  assert strings[-1] == "<action_2047>" == vocab.action_token(2047)
  with pytest.raises(ValueError, match="outside"):
    vocab.action_token(2048)
  with pytest.raises(TypeError, match="integer"):
    vocab.action_token(1.0)


def test_from_hf_tokenizer_maps_fast_ids_to_the_added_tokens():
  tokenizer = _extended_hf_tokenizer()
  action_vocab = vocab.ActionVocab.from_tokenizer(tokenizer)
  fast_ids = [0, 12, 7, 2047]
  token_ids = action_vocab.fast_to_token_ids(fast_ids)
  assert tokenizer.convert_ids_to_tokens(token_ids.tolist()) == [vocab.action_token(k) for k in fast_ids]
  np.testing.assert_array_equal(action_vocab.token_to_fast_ids(token_ids), fast_ids)
  # The text form tokenises to exactly the wrapped id form.
  text = vocab.fast_ids_to_text(fast_ids)
  assert text == "<action_start><action_0><action_12><action_7><action_2047><action_end>"
  assert tokenizer(text)["input_ids"] == action_vocab.wrap(fast_ids)
  assert vocab.text_to_fast_ids(text) == fast_ids
  # A tokenizers.Tokenizer gives the same mapping as its HF wrapper.
  assert vocab.ActionVocab.from_tokenizer(tokenizer.backend_tokenizer) == action_vocab


def test_explicit_first_id_assumes_strings_added_in_order():
  action_vocab = vocab.ActionVocab(first_action_token_id=151667)
  assert (action_vocab.action_start_id, action_vocab.action_end_id) == (151665, 151666)
  assert action_vocab.wrap([3]) == [151665, 151670, 151666]
  assert action_vocab.is_action_token(np.array([151666, 151667, 151667 + 2047, 151667 + 2048])).tolist() == [
      False, True, True, False]
  with pytest.raises(ValueError, match="overlap"):
    vocab.ActionVocab(first_action_token_id=10, action_start_id=12, action_end_id=9)


def test_unextended_or_scrambled_tokenizer_is_a_clear_error():
  base = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
  with pytest.raises(ValueError, match="lacks 2050 of the 2050 action tokens"):
    vocab.ActionVocab.from_tokenizer(base)
  scrambled = vocab.action_token_strings()
  scrambled[10], scrambled[20] = scrambled[20], scrambled[10]
  base.add_tokens(scrambled)
  with pytest.raises(ValueError, match="not consecutive"):
    vocab.ActionVocab.from_tokenizer(base)


def test_out_of_range_ids_raise():
  action_vocab = vocab.ActionVocab(first_action_token_id=100)
  with pytest.raises(ValueError, match=r"must be in \[0, 2048\)"):
    action_vocab.fast_to_token_ids([5, 2048])
  with pytest.raises(ValueError, match="not <action_k> tokens"):
    action_vocab.token_to_fast_ids([100, 99])
  with pytest.raises(TypeError, match="integers"):
    action_vocab.fast_to_token_ids([1.5])


def test_extract_fast_ids_from_a_sampled_response():
  v = vocab.ActionVocab(first_action_token_id=100)  # start 98, end 99
  response = [5, 6, 98, 100 + 12, 100 + 7, 99, 7, 98, 100 + 1]
  assert v.extract_fast_ids(response) == [12, 7]
  assert v.extract_fast_ids(response, strict=True) == [12, 7]
  # Unclosed or interrupted spans: the lenient reading keeps the prefix, strict rejects it.
  assert v.extract_fast_ids([98, 103, 104]) == [3, 4]
  assert v.extract_fast_ids([98, 103, 5, 104, 99]) == [3]
  assert v.extract_fast_ids([1, 2, 3]) == []
  with pytest.raises(ValueError, match="end of the sequence"):
    v.extract_fast_ids([98, 103, 104], strict=True)
  with pytest.raises(ValueError, match="token id 5"):
    v.extract_fast_ids([98, 103, 5, 99], strict=True)
  with pytest.raises(ValueError, match="no <action_start>"):
    v.extract_fast_ids([1, 2], strict=True)


def test_text_parsing_strict_and_lenient():
  text = "<think>go left</think><answer><action_start><action_3><action_2047><action_end></answer>"
  assert vocab.text_to_fast_ids(text) == [3, 2047]
  assert vocab.text_to_fast_ids("<action_start><action_end>") == []
  # Detokenisers may put spaces between added tokens; lenient parsing skips them.
  assert vocab.text_to_fast_ids("<action_start> <action_3> <action_4> <action_end>", strict=False) == [3, 4]
  assert vocab.text_to_fast_ids("<action_start><action_3>junk<action_4>", strict=False) == [3]
  assert vocab.text_to_fast_ids("<action_start><action_3><action_9999>", strict=False) == [3]
  assert vocab.text_to_fast_ids("no actions here", strict=False) == []
  for bad, message in [("<action_3><action_end>", "no <action_start>"),
                       ("<action_start><action_3>", "expected <action_end>"),
                       ("<action_start><action_3> <action_end>", "expected <action_end>"),
                       ("<action_start><action_2048><action_end>", "outside")]:
    with pytest.raises(ValueError, match=message):
      vocab.text_to_fast_ids(bad)
