"""RoboSpatial-Home (HF `chanhee-luke/RoboSpatial-Home`, scored by RoboSpatial-Eval): spatial
configuration / compatibility questions answered yes or no, and "context" questions answered with
points that must fall in a ground-truth region.

On disk (the layout RoboSpatial-Eval's `download_benchmark.py` writes and its `main.py` reads):
a directory of `*.json` files (e.g. `annotations.json`), each a list of objects with category,
question, answer ("yes"/"no", or a polygon "[(x, y), ...]"), img (path relative to the
directory, e.g. "images/x.png"); depth_image / mask are ignored.
Prompt: `question` as published. Score: see `pointing`; the headline is correct / total over all
files (the harness's overall accuracy), per-category accuracies beside it.
"""

from __future__ import annotations

import glob
import os
from typing import Sequence

from roboalign_jax.eval.mllm import files, pointing
from roboalign_jax.eval.mllm.examples import Benchmark, BenchmarkError, Example, mean_accuracy, per_category

NAME = "robospatial"


def load(path: str, judge=None) -> Benchmark:
  del judge
  if not os.path.isdir(path):
    raise BenchmarkError(NAME, path, "is not a directory; expected RoboSpatial-Home's *.json annotations + images/")
  json_files = sorted(glob.glob(os.path.join(path, "*.json")))
  if not json_files:
    raise BenchmarkError(NAME, path, "has no *.json files; expected RoboSpatial-Home's annotations "
                         "(a list of {category, question, answer, img})")
  examples = []
  for json_file in json_files:
    data = files.read_json(json_file, NAME)
    data = [data] if isinstance(data, dict) else data
    if not isinstance(data, list):
      raise BenchmarkError(NAME, json_file, f"holds {type(data).__name__}; expected a list of records")
    for k, record in enumerate(data):
      where = f"{json_file} record {k}"
      if not isinstance(record, dict):
        raise BenchmarkError(NAME, where, f"is {type(record).__name__}; expected an object")
      files.require(record, {"question": str, "answer": (str, list), "img": str}, NAME, where)
      answer = record["answer"]
      if not (isinstance(answer, str) and answer.strip().lower() in ("yes", "no")):
        try:
          pointing.polygon_of(answer)
        except (ValueError, SyntaxError) as error:
          raise BenchmarkError(NAME, where, f"answer {answer!r} is neither yes/no nor a polygon ({error})") from error
      image = os.path.join(path, record["img"])
      if not os.path.isfile(image):
        raise BenchmarkError(NAME, where, f"image {image} not found; expected img relative to {path}")
      examples.append(Example(id=f"{os.path.basename(json_file)}:{k}", prompt=record["question"], images=(image,),
                              target=answer, category=str(record.get("category", ""))))
  return Benchmark(NAME, path, tuple(examples), score, aggregate, max_new_tokens=128)


def score(example: Example, answer: str) -> dict:
  return pointing.robospatial_score(answer, example.target)


def aggregate(examples: Sequence[Example], records: Sequence[dict]) -> dict:
  return {"score": mean_accuracy(records), "num_examples": len(records),
          "illformed_responses": sum(not r["parsed"] for r in records),
          "categories": per_category(examples, records)}
