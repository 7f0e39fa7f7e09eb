"""What every benchmark loader produces: one `Example` per question, a `Benchmark` (examples +
the scoring rule + the aggregation rule of its public harness), and `BenchmarkError` for input
that is not in the published layout (its message names the file and what was expected)."""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image


class BenchmarkError(ValueError):
  """A benchmark's files are missing or not in the published layout."""

  def __init__(self, benchmark: str, where: str, message: str):
    super().__init__(f"benchmark {benchmark!r}, {where}: {message}")
    self.benchmark, self.where, self.reason = benchmark, where, message


# An image as stored by the benchmark: encoded bytes (parquet image columns) or a file path.
ImageRef = bytes | str


@dataclasses.dataclass(frozen=True)
class Example:
  """One question of a benchmark.

  id: unique within the benchmark (the published index / question id, else the row position).
  prompt: the user turn's text exactly as the public harness sends it (post/pre prompts included).
  images: encoded bytes or file paths, shown before the text in this order.
  target: what the scorer compares with (a letter, "yes"/"no", a polygon, a mask path, a reference).
  category: the breakdown key of the harness (MMStar: l2_category; RoboSpatial: category), or "".
  meta: anything else the aggregation needs (MMStar: the top-level category).
  """
  id: str
  prompt: str
  images: tuple[ImageRef, ...]
  target: Any
  category: str = ""
  meta: dict = dataclasses.field(default_factory=dict)


# score(example, answer) -> per-example record with at least "score" (float); JSON-serialisable.
ScoreFn = Callable[[Example, str], dict]
# aggregate(examples, records) -> {"score": headline in [0, 100], ...breakdown}; JSON-serialisable.
AggregateFn = Callable[[Sequence[Example], Sequence[dict]], dict]


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str
  source: str          # the local path it was read from
  examples: tuple[Example, ...]
  score: ScoreFn
  aggregate: AggregateFn
  max_new_tokens: int  # the default answer budget (short for letter answers, longer for points)


def decode_image(ref: ImageRef, *, benchmark: str, example_id: str) -> np.ndarray:
  """uint8 [H, W, 3] of an image reference."""
  try:
    if isinstance(ref, (bytes, bytearray)):
      image = Image.open(io.BytesIO(ref))
    else:
      image = Image.open(ref)
    with image:
      return np.asarray(image.convert("RGB"), np.uint8)
  except Exception as error:
    source = "embedded image bytes" if isinstance(ref, (bytes, bytearray)) else f"image file {ref}"
    raise BenchmarkError(benchmark, f"example {example_id!r}",
                         f"{source} could not be decoded ({error}); expected a PNG/JPEG image") from error


def mean_accuracy(records: Sequence[dict]) -> float:
  """100 x the mean of the records' scores (0 for no records)."""
  return 100.0 * float(np.mean([r["score"] for r in records])) if records else 0.0


def per_category(examples: Sequence[Example], records: Sequence[dict]) -> dict[str, float]:
  """category -> 100 x mean score of its examples, categories in first-seen order."""
  groups: dict[str, list[float]] = {}
  for example, record in zip(examples, records):
    groups.setdefault(example.category, []).append(record["score"])
  return {name: 100.0 * float(np.mean(scores)) for name, scores in groups.items()}
