"""Where2Place (RoboPoint's `where2place`): 100 free-space pointing questions on 640 x 480 images.

On disk (RoboPoint's layout): `point_questions.jsonl` (one object per line: question_id, image,
text, category), the images (`image` relative to `images/` as RoboPoint's --image-folder, or to the
directory), and
`masks/{k:02d}.jpg` for the k-th question of the file (0-based; a white region marks the target).
Prompt: `text` as published (it asks for a list of (x, y) points). Score: see `pointing`; the
headline is the mean per-question score x 100, with the number of unparsable answers beside it.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from roboalign_jax.eval.mllm import files, pointing
from roboalign_jax.eval.mllm.examples import Benchmark, BenchmarkError, Example, mean_accuracy, per_category

NAME = "where2place"
QUESTIONS = "point_questions.jsonl"


def load(path: str, judge=None) -> Benchmark:
  del judge
  if not os.path.isdir(path):
    raise BenchmarkError(NAME, path, f"is not a directory; expected RoboPoint's where2place/ with {QUESTIONS}, "
                         "images/ and masks/")
  question_file = os.path.join(path, QUESTIONS)
  examples = []
  for k, record in enumerate(files.read_jsonl(question_file, NAME)):
    where = f"{question_file} line {k + 1}"
    files.require(record, {"image": str, "text": str}, NAME, where)
    candidates = [os.path.join(path, "images", record["image"]), os.path.join(path, record["image"])]
    image = next((c for c in candidates if os.path.isfile(c)), None)
    if image is None:
      raise BenchmarkError(NAME, where, f"image {record['image']!r} not found; expected one of {candidates}")
    mask = os.path.join(path, "masks", f"{k:02d}.jpg")
    if not os.path.isfile(mask):
      raise BenchmarkError(NAME, where, f"mask {mask} not found; expected masks/{{k:02d}}.jpg for the k-th question")
    examples.append(Example(id=str(record.get("question_id", k)), prompt=record["text"], images=(image,),
                            target=mask, category=str(record.get("category", ""))))
  return Benchmark(NAME, path, tuple(examples), score, aggregate, max_new_tokens=256)


def read_mask(path: str) -> np.ndarray:
  """float [H, W]: the mask's grey value / 255 (soft JPEG edges kept, as the public scorer does)."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("L"), np.float64) / 255.0
  except Exception as error:
    raise BenchmarkError(NAME, path, f"could not be decoded ({error}); expected a JPEG mask") from error


def score(example: Example, answer: str) -> dict:
  return pointing.where2place_score(answer, read_mask(example.target))


def aggregate(examples: Sequence[Example], records: Sequence[dict]) -> dict:
  out = {"score": mean_accuracy(records), "num_examples": len(records),
         "unparsable": sum(not r["parsed"] for r in records),
         "no_points": sum(r["parsed"] and r["num_points"] == 0 for r in records)}
  if any(e.category for e in examples):
    out["categories"] = per_category(examples, records)
  return out
