"""BLINK Relative_Depth (HF `BLINK-Benchmark/BLINK`, subset Relative_Depth, lmms-eval task
`blink_relative_depth`): which of two marked points is closer to the camera.

On disk: the dataset directory (holding `Relative_Depth/val-00000-of-00001.parquet`), the
Relative_Depth directory, or the parquet file; columns idx, question, sub_task, image_1..image_4
(HF Image cells, unused ones null), choices, answer ("(A)"/"(B)"), prompt (question + options).
The val split is used (the test split's answers are not published).
Prompt: lmms-eval's pre prompt "Note: You only need to respond with A, B without providing any
additional information.\\n" + prompt, images first. Score: accuracy of the extracted letter.
"""

from __future__ import annotations

import re
from typing import Sequence

from roboalign_jax.eval.mllm import choice, files
from roboalign_jax.eval.mllm.examples import Benchmark, BenchmarkError, Example, mean_accuracy

NAME = "blink_depth"
SUBSET = "Relative_Depth"
PRE_PROMPT = "Note: You only need to respond with {} without providing any additional information.\n"
COLUMNS = ("idx", "prompt", "choices", "answer", "image_1")
EXPECTED = "BLINK's Relative_Depth/val-*.parquet (HF BLINK-Benchmark/BLINK), its directory, or the file"
_LETTERS = "ABCDE"


def load(path: str, judge=None) -> Benchmark:
  del judge
  paths = files.find_parquet(path, NAME, (f"{SUBSET}/val-*.parquet", f"{SUBSET}/val/*.parquet", "val-*.parquet",
                                          "val/*.parquet"), EXPECTED)
  examples = []
  for k, row in enumerate(files.parquet_rows(paths, NAME, COLUMNS)):
    where = f"{paths[0] if len(paths) == 1 else path} row {k}"
    files.require(row, {"prompt": str, "choices": list, "answer": str}, NAME, where)
    labels = _LETTERS[:len(row["choices"])]
    if not re.fullmatch(r"\([A-E]\)", row["answer"]) or row["answer"][1] not in labels:
      raise BenchmarkError(NAME, where, f"answer is {row['answer']!r}; expected one of "
                           f"{['(' + c + ')' for c in labels]} (the test split has no answers: use val)")
    image_columns = sorted((c for c in row if re.fullmatch(r"image_\d+", c)), key=lambda c: int(c.split("_")[1]))
    images = tuple(files.image_bytes(row[c], NAME, where, c) for c in image_columns if row[c] is not None)
    if not images:
      raise BenchmarkError(NAME, where, "has no image; expected image_1")
    examples.append(Example(id=str(row["idx"]), prompt=PRE_PROMPT.format(", ".join(labels)) + row["prompt"],
                            images=images, target=row["answer"]))
  return Benchmark(NAME, path, tuple(examples), score, aggregate, max_new_tokens=32)


def score(example: Example, answer: str) -> dict:
  return {"score": choice.blink_match(answer, example.target), "letter": choice.blink_letter(answer)}


def aggregate(examples: Sequence[Example], records: Sequence[dict]) -> dict:
  return {"score": mean_accuracy(records), "num_examples": len(records)}
