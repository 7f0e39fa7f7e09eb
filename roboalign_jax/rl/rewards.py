"""RoboAlign's GRPO reward: a format check plus the prefix accuracy of the action tokens.

    r = (r_format + r_acc) / 2
    r_format ∈ {0, 1}: the response is `<think>…</think><answer><action_start>…<action_end></answer>`
    r_acc = (longest common prefix of generated and target FAST ids) / len(target)   (paper Eq. 2)

Accuracy works on token ids (FAST ids read through `fast.vocab.ActionVocab`), never on
detokenised text, which may drop special tokens. The format check reads the response text
decoded with special tokens kept (`parse_response` produces both from sampled token ids).

Rewards are pluggable: `config.grpo.reward` names an entry of REWARDS, a function
`(ParsedResponse, target payload) -> {component: value, ..., "overall": value}`. The payload is
what the prompt builder attached to the prompt (`{"fast_ids": [...]}` for "roboalign"; a letter
for multiple-choice or a 2-D trajectory for the paper's ablations would be other payloads read
by other entries). The trainer logs `reward` (overall) and `<component>_reward` per component.

Degenerate inputs score 0, never raise or give NaN: an empty target (`{"fast_ids": []}`, `""` or
None: `is_empty_target`, which the trainer counts and leaves out of the update), an empty response,
and a response cut off at the token limit (no end-of-turn token: the format check reads the text
as it is, so a cut-off answer fails it; the accuracy counts the action ids generated so far).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from roboalign_jax.fast.vocab import ACTION_END, ACTION_START, NUM_ACTION_TOKENS, ActionVocab

# Chat-format tokens a sampler may leave at the end of a response (EOS is kept in the mask).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")

_TRAILING = re.compile(r"(?:\s|" + "|".join(map(re.escape, END_OF_TURN_TOKENS)) + r")+\Z")
# <action_k> for k in [0, NUM_ACTION_TOKENS): no leading zeros, so every match is a real token.
_ACTION_K = r"<action_(?:0|[1-9]\d{0,3})>"
_TAG = re.compile(r"</?(?:think|answer)>")
_FORMAT = re.compile(
    r"<think>(?P<reasoning>.*?)</think>\s*<answer>\s*" + re.escape(ACTION_START)
    + r"(?P<actions>(?:" + _ACTION_K + r")+)" + re.escape(ACTION_END) + r"\s*</answer>",
    re.DOTALL)
_ACTION_ID = re.compile(r"<action_(\d+)>")


def format_reward(text: str) -> float:
  """1.0 iff `text` (trailing `<|im_end|>` / `<|endoftext|>` / whitespace removed) is exactly
  `<think>` reasoning `</think>` [ws] `<answer>` [ws] `<action_start>` `<action_k>`+ `<action_end>`
  [ws] `</answer>`; else 0.0.

  Reasoning may span lines but must hold a non-whitespace character and no think/answer tags.
  Nothing may precede `<think>` (as in r1v's whole-response match), and the action tokens
  follow each other with no characters between them, as the tokenizer decodes them.
  """
  if not isinstance(text, str):
    raise TypeError(f"format_reward: text must be a str, got {type(text).__name__}")
  match = _FORMAT.fullmatch(_TRAILING.sub("", text))
  if match is None:
    return 0.0
  reasoning = match.group("reasoning")
  if not reasoning.strip() or _TAG.search(reasoning):
    return 0.0
  if any(int(k) >= NUM_ACTION_TOKENS for k in _ACTION_ID.findall(match.group("actions"))):
    return 0.0
  return 1.0


def accuracy_reward(generated_action_ids: Sequence[int], target_action_ids: Sequence[int]) -> float:
  """Paper Eq. 2: longest common prefix of the FAST-id sequences / len(target), in [0, 1].

  0 when the first ids differ, nothing was generated or the target is empty (`[]`, `""` or None);
  ids generated past the target's length do not lower it. Inputs: int [n] and int [m] (lists or arrays).
  """
  generated = _ids(generated_action_ids, "generated_action_ids")
  target = _ids(target_action_ids, "target_action_ids")
  if target.size == 0 or generated.size == 0:
    return 0.0
  n = min(generated.size, target.size)
  differ = np.flatnonzero(generated[:n] != target[:n])
  prefix = int(differ[0]) if differ.size else n
  return prefix / target.size


def roboalign_reward(text: str, generated_action_ids: Sequence[int],
                     target_action_ids: Sequence[int]) -> dict[str, float]:
  """{format, accuracy, overall = (format + accuracy) / 2} for one response."""
  fmt = format_reward(text)
  acc = accuracy_reward(generated_action_ids, target_action_ids)
  return {"format": fmt, "accuracy": acc, "overall": (fmt + acc) / 2}


@dataclasses.dataclass(frozen=True)
class ParsedResponse:
  text: str                # decoded with special tokens kept (for `format_reward`)
  action_ids: list[int]    # FAST ids of the first action span (for `accuracy_reward`)


def parse_response(token_ids, tokenizer: Any, action_vocab: ActionVocab, mask=None) -> ParsedResponse:
  """Sampled response token ids -> (text with special tokens kept, FAST ids from the ids).

  token_ids: int [T]; mask: bool [T] or None (a rollout's mask: True up to and including EOS,
  so padding after EOS is dropped). The action ids are the run of `<action_k>` tokens after
  the first `<action_start>` (`ActionVocab.extract_fast_ids(strict=False)`).
  """
  ids = np.asarray(token_ids)
  if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
    raise ValueError(f"parse_response: token_ids must be int [T], got {ids.dtype} {ids.shape}")
  if mask is not None:
    mask = np.asarray(mask)
    if mask.shape != ids.shape:
      raise ValueError(f"parse_response: mask shape {mask.shape} differs from token_ids shape {ids.shape}")
    ids = ids[mask.astype(bool)]
  ids = ids.astype(np.int64).tolist()
  text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
  return ParsedResponse(text=text, action_ids=action_vocab.extract_fast_ids(ids))


def roboalign_score(response: ParsedResponse, target: Mapping[str, Any]) -> dict[str, float]:
  """RoboAlign's reward of one parsed response against `{"fast_ids": [...]}`."""
  if "fast_ids" not in target:
    raise ValueError(f"the 'roboalign' reward needs a target payload with 'fast_ids', got keys {sorted(target)}")
  return roboalign_reward(response.text, response.action_ids, target["fast_ids"])


def is_empty_target(target: Any) -> bool:
  """True when a target payload holds no ground truth to score against: None, an empty string or
  sequence, or a mapping whose values are all such (`{"fast_ids": []}`). A plain sequence stands
  for `{"fast_ids": ...}`, as in `score_responses`."""
  if isinstance(target, Mapping):
    return all(is_empty_target(v) for v in target.values())
  if target is None:
    return True
  if isinstance(target, (str, bytes)):
    return len(target) == 0
  return np.size(target) == 0 if isinstance(target, (Sequence, np.ndarray)) else False


RewardFn = Callable[[ParsedResponse, Mapping[str, Any]], Mapping[str, float]]
# config.grpo.reward -> the function scoring one response; every result holds "overall".
REWARDS: dict[str, RewardFn] = {"roboalign": roboalign_score}


def get_reward(name: str) -> RewardFn:
  if name not in REWARDS:
    raise ValueError(f"unknown config.grpo.reward {name!r}; registered rewards: {sorted(REWARDS)}")
  return REWARDS[name]


def score_responses(tokens, mask, targets: Sequence[Any], tokenizer: Any, action_vocab: ActionVocab,
                    reward: str | RewardFn = "roboalign") -> dict[str, np.ndarray]:
  """Rewards of a batch of sampled responses.

  tokens: int [N, T]; mask: bool [N, T]; targets: N payloads (repeat each prompt's for its G
  samples); a plain sequence of ints stands for `{"fast_ids": ...}`. reward: a name in REWARDS or
  a RewardFn. Returns float32 [N] arrays: every component the reward reports (for "roboalign":
  format, accuracy, overall) and length (masked-in tokens, EOS included).
  """
  tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
  if tokens.ndim != 2 or mask.shape != tokens.shape:
    raise ValueError(f"score_responses: tokens and mask must both be [N, T], got {tokens.shape} and {mask.shape}")
  if len(targets) != tokens.shape[0]:
    raise ValueError(f"score_responses: {len(targets)} targets for {tokens.shape[0]} responses")
  score = get_reward(reward) if isinstance(reward, str) else reward
  out: dict[str, np.ndarray] = {}
  for i, target in enumerate(targets):
    if not isinstance(target, Mapping):
      target = {"fast_ids": target}
    parsed = parse_response(tokens[i], tokenizer, action_vocab, mask[i])
    values = score(parsed, target)
    if "overall" not in values:
      raise ValueError(f"reward {reward!r} returned {sorted(values)}; it must include 'overall'")
    for k, v in values.items():
      out.setdefault(k, np.zeros(tokens.shape[0], np.float32))[i] = v
  out["length"] = mask.sum(-1).astype(np.float32)
  return out


def _ids(values, name: str) -> np.ndarray:
  if values is None or (isinstance(values, (str, bytes)) and not values):
    values = []  # no ids given: an empty target or generation, which scores 0
  elif isinstance(values, (str, bytes)):
    raise ValueError(f"{name}: expected a 1-D sequence of integer FAST ids, got the string {values[:40]!r}")
  array = np.asarray(values)
  if array.size == 0:
    return array.reshape(0).astype(np.int64)
  if array.ndim != 1 or array.dtype.kind not in "iu":
    raise ValueError(f"{name}: expected a 1-D sequence of integer FAST ids, got {array.dtype} {array.shape}")
  return array.astype(np.int64)
