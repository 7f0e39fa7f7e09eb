"""User benchmarks in the LLaVA JSONL format of `data/conversations.py` (and Robot-R1 Bench in
the same format, scored by a judge).

On disk: a JSONL file, one object per line:
    {"id": "q1", "image": "images/a.png" | ["a.png", "b.png"],
     "conversations": [{"from": "human", "value": "<image>\\nQuestion?"}, {"from": "gpt", "value": "reference"}],
     "answer": "short answer" (optional; else the gpt turn is the reference)}
exactly one human turn and one gpt turn; each `<image>` is one image at that place, paths
relative to the file's directory.
Score without a judge ("jsonl"): exact match after lowercasing, stripping whitespace and a final
period, of the answer (the text inside <answer>...</answer> when present) against the reference.
With a judge ("robot_r1", or "jsonl" given --judge): judge(question, reference, answer) / max_score.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Sequence

from roboalign_jax.data.conversations import ConversationSource
from roboalign_jax.data.errors import DataError
from roboalign_jax.eval.mllm import judge as judge_lib
from roboalign_jax.eval.mllm.examples import Benchmark, BenchmarkError, Example, mean_accuracy, per_category

NAME = "jsonl"
JUDGED_NAME = "robot_r1"
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def load(path: str, judge: judge_lib.Judge | None = None, *, name: str = NAME) -> Benchmark:
  try:
    source = ConversationSource(path, name=name)
    records = [source.record(k) for k in range(len(source))]
  except DataError as error:
    raise BenchmarkError(name, path, f"{error.reason}; expected LLaVA-format JSONL") from error
  examples = []
  for k, record in enumerate(records):
    turns = record["conversations"]
    if len(turns) != 2:
      raise BenchmarkError(name, f"{path} record {k}", f"has {len(turns)} turns; expected one human question "
                           "and one gpt reference")
    reference = record.get("answer") if record.get("answer") is not None else turns[1]["value"]
    examples.append(Example(id=str(record.get("id", k)), prompt=turns[0]["value"],
                            images=_image_paths(record, source.image_root), target=str(reference),
                            category=str(record.get("category", ""))))
  scorer = functools.partial(judged_score, judge) if judge is not None else exact_score
  return Benchmark(name, path, tuple(examples), scorer, aggregate, max_new_tokens=512 if judge else 128)


def _image_paths(record: dict, root: str) -> tuple[str, ...]:
  images = record.get("image")
  images = [] if images is None else [images] if isinstance(images, str) else list(images)
  return tuple(p if os.path.isabs(p) else os.path.join(root, p) for p in images)


def load_judged(path: str, judge: judge_lib.Judge | None = None) -> Benchmark:
  """Robot-R1 Bench: open-ended answers, judged 0-3; refuses to run without a judge."""
  if judge is None:
    raise BenchmarkError(JUDGED_NAME, path, "needs an LLM judge (no public harness exists); expected "
                         "--judge=package.module:attribute giving a Judge (see eval/mllm/judge.py)")
  return load(path, judge, name=JUDGED_NAME)


def normalise(text: str) -> str:
  found = _ANSWER_TAG.search(text)
  text = found.group(1) if found else text
  return text.strip().lower().removesuffix(".").strip()


def exact_score(example: Example, answer: str) -> dict:
  return {"score": float(normalise(answer) == normalise(example.target))}


def judged_score(judge: judge_lib.Judge, example: Example, answer: str) -> dict:
  question = example.prompt.replace("<image>", "").strip()
  return {"score": judge_lib.normalised_score(judge, question, example.target, answer)}


def aggregate(examples: Sequence[Example], records: Sequence[dict]) -> dict:
  out = {"score": mean_accuracy(records), "num_examples": len(records)}
  if any(e.category for e in examples):
    out["categories"] = per_category(examples, records)
  return out
