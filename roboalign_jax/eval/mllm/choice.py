"""Multiple-choice answers, by the rules of lmms-eval's MMStar and BLINK tasks.

MMStar (`exact_match`, "brought from MMStar"): lowercase and strip both sides, newlines to spaces;
the answer is right when the ground-truth letter is
  the first character ("B", "b. cat", but also "because ..." for B),
  the character after a leading "(" ("(B) ..."),
  the character after a leading "option " ("Option B"),
  the character after a leading "the answer is " ("The answer is B").
Only these prefixes count: "The answer is (B)." scores 0 (character 15 is "("), as in lmms-eval.

BLINK (`_extract_answer_letter`): strip, then match `[(\\s]*([A-Z])[).\\s]*` at the start,
case-insensitive; the letter (uppercased) must equal the answer with its parentheses stripped
("(B)" -> "B"). "The answer is (B)." extracts "T". An empty answer extracts "".
"""

from __future__ import annotations

import re

_MMSTAR_PREFIXES = ("(", "option ", "the answer is ")
_BLINK_LETTER = re.compile(r"[(\s]*([A-Z])[).\s]*", re.IGNORECASE)


def mmstar_candidates(prediction: str) -> list[str]:
  """The lowercase characters MMStar's rule compares with the ground-truth letter, in rule order."""
  text = prediction.lower().strip().replace("\n", " ")
  if not text:
    return []
  found = [text[0]]
  for prefix in _MMSTAR_PREFIXES:
    if text.startswith(prefix) and len(text) > len(prefix):
      found.append(text[len(prefix)])
  return found


def mmstar_match(prediction: str, answer: str) -> float:
  """1.0 when MMStar's rule accepts `prediction` for the ground-truth letter `answer`, else 0.0."""
  truth = answer.lower().strip().replace("\n", " ")
  return 1.0 if truth and truth in mmstar_candidates(prediction) else 0.0


def blink_letter(prediction: str) -> str:
  """The letter BLINK's rule reads from the start of `prediction` (uppercase), or ""."""
  match = _BLINK_LETTER.match(prediction.strip())
  return match.group(1).upper() if match else ""


def blink_match(prediction: str, answer: str) -> float:
  """1.0 when the extracted letter equals `answer` without its parentheses ("(A)" -> "A")."""
  return 1.0 if blink_letter(prediction) == answer.strip("()") else 0.0
