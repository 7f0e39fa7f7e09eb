"""The vocabulary bridge between FAST ids and the MLLM's action tokens.

The MLLM vocabulary is extended with `<action_start>`, `<action_end>` and one token
`<action_k>` per FAST id k (k = 0 … 2047). This module is the single source of truth for
those strings; the backbone's tokenizer extension imports them from here.

Two forms of an encoded action chunk leave this module:
  * token ids: `[id(<action_start>), id(<action_k1>), …, id(<action_end>)]`
    (`ActionVocab.wrap`), which is what SFT targets and GRPO rewards work on;
  * text: `"<action_start><action_12><action_7><action_end>"` (`fast_ids_to_text`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import numpy as np

ACTION_START = "<action_start>"
ACTION_END = "<action_end>"
NUM_ACTION_TOKENS = 2048

_ACTION_TOKEN = re.compile(r"<action_(\d+)>")
_WHITESPACE = re.compile(r"\s*")


def action_token(k: int) -> str:
  """The token string `<action_k>` for FAST id `k` in [0, NUM_ACTION_TOKENS)."""
  if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
    raise TypeError(f"FAST id must be an integer, got {type(k).__name__} {k!r}")
  if not 0 <= k < NUM_ACTION_TOKENS:
    raise ValueError(f"FAST id {k} is outside [0, {NUM_ACTION_TOKENS})")
  return f"<action_{int(k)}>"


def action_token_strings() -> list[str]:
  """`[ACTION_START, ACTION_END, <action_0>, …, <action_2047>]`, the order to add them in.

  Adding these to a tokenizer in this order (on a vocabulary without them) gives
  `<action_start>` = n, `<action_end>` = n + 1 and `<action_k>` = n + 2 + k.
  """
  return [ACTION_START, ACTION_END] + [f"<action_{k}>" for k in range(NUM_ACTION_TOKENS)]


def fast_ids_to_text(fast_ids: Sequence[int]) -> str:
  """`[12, 7]` -> `"<action_start><action_12><action_7><action_end>"`."""
  return ACTION_START + "".join(action_token(int(k)) for k in _as_int_list(fast_ids, "fast_ids")) + ACTION_END


def text_to_fast_ids(text: str, *, strict: bool = True) -> list[int]:
  """Parses the text form back into FAST ids.

  strict=True: `text` must contain `<action_start>`, then only `<action_k>` tokens
  (k < NUM_ACTION_TOKENS, no other characters), then `<action_end>`; anything else raises
  ValueError. Text before the start marker and after the end marker is ignored.
  strict=False (for scoring model output): the run of action tokens right after the first
  `<action_start>`, whitespace between them skipped, stopping at `<action_end>`, any other
  text, an id >= NUM_ACTION_TOKENS, or the end of the text; [] when there is no start marker.
  """
  if not isinstance(text, str):
    raise TypeError(f"text must be a str, got {type(text).__name__}")
  start = text.find(ACTION_START)
  if start < 0:
    if strict:
      raise ValueError(f"no {ACTION_START} in action text {_preview(text)}")
    return []
  pos = start + len(ACTION_START)
  ids = []
  while True:
    if not strict:
      pos = _WHITESPACE.match(text, pos).end()
    match = _ACTION_TOKEN.match(text, pos)
    if match is None:
      break
    k = int(match.group(1))
    if k >= NUM_ACTION_TOKENS:
      if strict:
        raise ValueError(f"action token {match.group(0)} is outside [0, {NUM_ACTION_TOKENS}) in {_preview(text)}")
      break
    ids.append(k)
    pos = match.end()
  if strict and not text.startswith(ACTION_END, pos):
    raise ValueError(
        f"expected {ACTION_END} or <action_k> at character {pos} of action text {_preview(text)}, "
        f"found {text[pos:pos + 20]!r}")
  return ids


@dataclasses.dataclass(frozen=True)
class ActionVocab:
  """Where the action tokens sit in an MLLM vocabulary.

  The `<action_k>` tokens must have consecutive ids, `first_action_token_id + k`; this keeps
  the mapping one add/subtract, usable inside jitted code. `action_start_id` and
  `action_end_id` default to the two ids just before `<action_0>`, which is what adding
  `action_token_strings()` in order produces.
  """
  first_action_token_id: int
  action_start_id: int | None = None
  action_end_id: int | None = None
  num_action_tokens: int = NUM_ACTION_TOKENS

  def __post_init__(self):
    for name in ("first_action_token_id", "action_start_id", "action_end_id", "num_action_tokens"):
      value = getattr(self, name)
      if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
        raise TypeError(f"ActionVocab.{name} must be an int, got {type(value).__name__} {value!r}")
    if self.action_start_id is None:
      object.__setattr__(self, "action_start_id", self.first_action_token_id - 2)
    if self.action_end_id is None:
      object.__setattr__(self, "action_end_id", self.first_action_token_id - 1)
    if self.first_action_token_id < 0 or self.action_start_id < 0 or self.action_end_id < 0:
      raise ValueError(f"token ids must be >= 0, got {self}")
    if not 0 < self.num_action_tokens <= NUM_ACTION_TOKENS:
      raise ValueError(f"num_action_tokens must be in [1, {NUM_ACTION_TOKENS}], got {self.num_action_tokens}")
    action_range = range(self.first_action_token_id, self.first_action_token_id + self.num_action_tokens)
    if self.action_start_id == self.action_end_id or any(
        i in action_range for i in (self.action_start_id, self.action_end_id)):
      raise ValueError(f"start, end and action token ids overlap: {self}")

  @classmethod
  def from_tokenizer(cls, tokenizer: Any) -> "ActionVocab":
    """Reads the ids of the action tokens from an extended tokenizer.

    `tokenizer`: a HF `PreTrainedTokenizerBase` (uses `convert_tokens_to_ids`) or a
    `tokenizers.Tokenizer` (uses `token_to_id`). Raises ValueError naming what is missing
    when the tokenizer was not extended with `action_token_strings()`, or when the
    `<action_k>` ids are not consecutive.
    """
    strings = action_token_strings()
    if hasattr(tokenizer, "convert_tokens_to_ids"):
      ids = tokenizer.convert_tokens_to_ids(strings)
      unk_id = getattr(tokenizer, "unk_token_id", None)
      ids = [None if (i is None or (unk_id is not None and i == unk_id)) else int(i) for i in ids]
    elif hasattr(tokenizer, "token_to_id"):
      ids = [tokenizer.token_to_id(s) for s in strings]
    else:
      raise TypeError(f"expected a HF tokenizer or a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
    missing = [s for s, i in zip(strings, ids) if i is None]
    if missing:
      raise ValueError(
          f"tokenizer lacks {len(missing)} of the {len(strings)} action tokens (first: {missing[:3]}); "
          "extend it with roboalign_jax.fast.vocab.action_token_strings()")
    action_ids = np.asarray(ids[2:], dtype=np.int64)
    first = int(action_ids[0])
    if not np.array_equal(action_ids, first + np.arange(NUM_ACTION_TOKENS)):
      bad = int(np.argmax(action_ids != first + np.arange(NUM_ACTION_TOKENS)))
      raise ValueError(
          f"<action_k> token ids are not consecutive: <action_0> = {first} but "
          f"<action_{bad}> = {int(action_ids[bad])}; add action_token_strings() in order to a tokenizer without them")
    return cls(first_action_token_id=first, action_start_id=ids[0], action_end_id=ids[1])

  def fast_to_token_ids(self, fast_ids) -> np.ndarray:
    """FAST ids (int array of any shape, values in [0, num_action_tokens)) -> MLLM token ids, same shape."""
    fast_ids = _as_int_array(fast_ids, "fast_ids")
    bad = (fast_ids < 0) | (fast_ids >= self.num_action_tokens)
    if bad.any():
      raise ValueError(
          f"FAST ids must be in [0, {self.num_action_tokens}); got {fast_ids[bad][:5].tolist()} "
          f"({int(bad.sum())} out of range)")
    return fast_ids + self.first_action_token_id

  def token_to_fast_ids(self, token_ids) -> np.ndarray:
    """MLLM token ids that are all `<action_k>` tokens (any shape) -> FAST ids, same shape."""
    token_ids = _as_int_array(token_ids, "token_ids")
    bad = ~self.is_action_token(token_ids)
    if bad.any():
      raise ValueError(
          f"token ids {token_ids[bad][:5].tolist()} are not <action_k> tokens "
          f"(expected ids in [{self.first_action_token_id}, {self.first_action_token_id + self.num_action_tokens}))")
    return token_ids - self.first_action_token_id

  def is_action_token(self, token_ids):
    """bool mask, same shape as `token_ids`; plain comparisons, so it also works on jax arrays under jit."""
    return (token_ids >= self.first_action_token_id) & (token_ids < self.first_action_token_id + self.num_action_tokens)

  def wrap(self, fast_ids) -> list[int]:
    """FAST ids `[k1, …, km]` -> `[<action_start>, <action_k1>, …, <action_km>, <action_end>]` token ids."""
    body = self.fast_to_token_ids(np.asarray(_as_int_list(fast_ids, "fast_ids"), dtype=np.int64).reshape(-1))
    return [self.action_start_id, *body.tolist(), self.action_end_id]

  def extract_fast_ids(self, token_ids, *, strict: bool = False) -> list[int]:
    """The FAST ids of the action span in a token sequence (e.g. a sampled response).

    strict=False (for scoring model output): the run of `<action_k>` tokens right after the
    first `<action_start>`, stopping at `<action_end>`, any other token or the end; [] when
    there is no `<action_start>`.
    strict=True: the tokens between the first `<action_start>` and the next `<action_end>`
    must all be action tokens and `<action_end>` must be there; otherwise ValueError.
    `token_ids`: int [T] (a list, numpy or jax array).
    """
    token_ids = _as_int_array(token_ids, "token_ids").reshape(-1)
    starts = np.flatnonzero(token_ids == self.action_start_id)
    if starts.size == 0:
      if strict:
        raise ValueError(f"no <action_start> (id {self.action_start_id}) in token ids")
      return []
    rest = token_ids[starts[0] + 1:]
    not_action = np.flatnonzero(~self.is_action_token(rest))
    stop = int(not_action[0]) if not_action.size else rest.size
    if strict and (stop == rest.size or rest[stop] != self.action_end_id):
      found = "the end of the sequence" if stop == rest.size else f"token id {int(rest[stop])}"
      raise ValueError(f"expected <action_end> (id {self.action_end_id}) or an action token, found {found}")
    return (rest[:stop] - self.first_action_token_id).tolist()


def _as_int_array(values, name: str) -> np.ndarray:
  array = np.asarray(values)
  if array.size == 0:
    return array.astype(np.int64)
  if array.dtype.kind not in "iu":
    raise TypeError(f"{name} must be integers, got dtype {array.dtype}")
  return array.astype(np.int64)


def _as_int_list(values, name: str) -> list[int]:
  return _as_int_array(values, name).reshape(-1).tolist()


def _preview(text: str) -> str:
  return repr(text if len(text) <= 80 else text[:77] + "...")
