"""MMStar (HF `Lin-Chen/MMStar`, lmms-eval task `mmstar`): 1500 four-way multiple-choice questions.

On disk: the dataset's `mmstar.parquet` (or the parquet-converter's `val/*.parquet`), columns
index, question (options inside the text), image (HF Image: {"bytes", "path"}), answer (a letter),
category (6 core capabilities), l2_category (18 dimensions), meta_info.
Prompt: the question (" Please answer yes or no." removed) + lmms-eval's default post prompt.
Score: lmms-eval's `exact_match` (see `choice`); each capability's score is the mean of its
dimensions' accuracies, the headline ("average") the mean over all dimensions' accuracies.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from roboalign_jax.eval.mllm import choice, files
from roboalign_jax.eval.mllm.examples import Benchmark, BenchmarkError, Example, per_category

NAME = "mmstar"
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly"
_REMOVED = " Please answer yes or no."
COLUMNS = ("index", "question", "image", "answer", "category", "l2_category")
EXPECTED = "MMStar's mmstar.parquet (HF Lin-Chen/MMStar) or a directory holding it"


def load(path: str, judge=None) -> Benchmark:
  del judge  # letter answers need none
  paths = files.find_parquet(path, NAME, ("mmstar.parquet", "val/*.parquet", "*.parquet"), EXPECTED)
  examples = []
  for k, row in enumerate(files.parquet_rows(paths, NAME, COLUMNS)):
    where = f"{paths[0] if len(paths) == 1 else path} row {k}"
    files.require(row, {"question": str, "answer": str, "category": str, "l2_category": str}, NAME, where)
    if row["answer"].strip().upper() not in ("A", "B", "C", "D", "E", "F"):
      raise BenchmarkError(NAME, where, f"answer is {row['answer']!r}; expected an option letter")
    examples.append(Example(
        id=str(row["index"]), prompt=row["question"].strip().replace(_REMOVED, "") + POST_PROMPT,
        images=(files.image_bytes(row["image"], NAME, where, "image"),), target=row["answer"],
        category=row["l2_category"], meta={"category": row["category"]}))
  return Benchmark(NAME, path, tuple(examples), score, aggregate, max_new_tokens=32)


def score(example: Example, answer: str) -> dict:
  return {"score": choice.mmstar_match(answer, example.target)}


def aggregate(examples: Sequence[Example], records: Sequence[dict]) -> dict:
  dimensions = per_category(examples, records)
  by_capability: dict[str, set[str]] = {}
  for example in examples:
    by_capability.setdefault(example.meta["category"], set()).add(example.category)
  return {"score": float(np.mean(list(dimensions.values()))) if dimensions else 0.0,
          "capabilities": {name: float(np.mean([dimensions[d] for d in sorted(members)]))
                           for name, members in by_capability.items()},
          "dimensions": dimensions, "num_examples": len(records)}
