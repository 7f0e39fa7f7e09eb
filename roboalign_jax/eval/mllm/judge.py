"""The judge interface for open-ended benchmarks (Robot-R1 Bench: answers judged 0-3 by an LLM;
no public harness exists). Nothing here calls a model: a judge is whatever the user plugs in.

    class MyJudge:                       # e.g. an OpenAI / local-LLM client with a rubric prompt
      max_score = 3.0
      def __call__(self, question: str, reference: str, answer: str) -> float: ...

    runner.evaluate(models, {"robot_r1": "data/robot_r1.jsonl"}, out_dir, judge=MyJudge())
    python launch/eval_mllm.py ... --benchmarks=robot_r1:data/robot_r1.jsonl --judge=my_pkg.judges:make

A judged benchmark's per-example score is judge(...) / max_score in [0, 1]; the table shows the
mean x 100. `load_judge("module:attribute")` imports a judge (a class or a factory is called with
no arguments; an instance is used as is).
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable


@runtime_checkable
class Judge(Protocol):
  """Scores an answer to `question` against the `reference` answer, in [0, max_score]."""
  max_score: float

  def __call__(self, question: str, reference: str, answer: str) -> float:
    ...


def normalised_score(judge: Judge, question: str, reference: str, answer: str) -> float:
  """judge(...) / judge.max_score, checked to be a number in [0, 1]."""
  raw = judge(question, reference, answer)
  if isinstance(raw, bool) or not isinstance(raw, (int, float)):
    raise TypeError(f"judge {type(judge).__name__} returned {raw!r}; expected a number in [0, {judge.max_score}]")
  if not 0 <= raw <= judge.max_score:
    raise ValueError(f"judge {type(judge).__name__} returned {raw}; expected a number in [0, {judge.max_score}]")
  return float(raw) / float(judge.max_score)


def load_judge(spec: str) -> Judge:
  """A judge from "package.module:attribute" (a Judge instance, or a class / factory called with no args)."""
  module_name, _, attribute = spec.partition(":")
  if not module_name or not attribute:
    raise ValueError(f"--judge={spec!r}; expected 'package.module:attribute'")
  try:
    target = getattr(importlib.import_module(module_name), attribute)
  except (ImportError, AttributeError) as error:
    raise ValueError(f"--judge={spec!r} could not be imported ({error}); expected 'package.module:attribute'") from error
  judge = target() if isinstance(target, type) or not isinstance(target, Judge) else target
  if not isinstance(judge, Judge):
    raise TypeError(f"--judge={spec!r} gave {judge!r}; expected an object with max_score and "
                    "__call__(question, reference, answer) -> float")
  return judge
