"""Point answers, by the rules of RoboPoint's Where2Place scorer (`robopoint/eval/summarize_vqa.py`)
and RoboSpatial-Eval (`evaluation.py`), plus RoboSpatial's yes/no rule.

Where2Place: every parenthesised, comma-separated group of numbers in the answer is read;
  2 numbers are a point (x, y), 4 numbers a box (x0, y0, x1, y1) that stands for every pixel
  inside it. A group with a decimal point anywhere in a point (in x0 for a box) is normalised to
  [0, 1] and scaled by the image size (int(x * width)); integer groups are pixels. Groups of
  other lengths are ignored. Score of one question = mean over the points of the mask value at
  the point (mask / 255, so a JPEG mask's soft edges count partially); points outside the image
  count as 0; no points -> 0. Benchmark score = mean over questions.
  The public harness normalises with the constant 640 x 480 of the Where2Place images; here the
  mask's own size is used, which is the same for the published data.
  A group the harness's parser fails on (a box mixing integers and floats, "(10, 20, 0.5, 0.5)")
  makes it skip the question; here the question is scored 0 and counted as unparsable instead
  (so the denominator is every question).

RoboSpatial: a ground truth of "yes"/"no" is a binary question, right when the lowercased,
  stripped answer starts with it. Otherwise the ground truth is a polygon (a list of (x, y)) and
  the answer's first point -- the first "(x, y)", else the first "[x, y]", else the first
  element of the first "[...]" list -- must fall inside it (ray casting; no rescaling: the
  polygon and the point are in the same coordinates, normalised in the published data).
"""

from __future__ import annotations

import ast
import re
from typing import Sequence

import numpy as np

_GROUP = re.compile(r"\(([-+]?\d+\.?\d*(?:,\s*[-+]?\d+\.?\d*)*?)\)")
_TUPLE = re.compile(r"\(\s*(\d+\.?\d*)\s*,\s*(\d+\.?\d*)\s*\)")
_PAIR = re.compile(r"\[\s*(\d+\.?\d*)\s*,\s*(\d+\.?\d*)\s*\]")
_LIST = re.compile(r"\[(.*?)\]", re.DOTALL)


class UnparsableAnswer(ValueError):
  """The answer holds a number group the Where2Place parser fails on."""


def _number(text: str) -> int | float:
  return float(text) if "." in text else int(text)


def where2place_points(text: str, width: int, height: int) -> np.ndarray:
  """int [N, 2] pixel points (x, y) read from an answer; raises UnparsableAnswer."""
  points: list[tuple[int, int]] = []
  for group in _GROUP.findall(text):
    values = [_number(v.strip()) for v in group.split(",")]
    if len(values) == 2:
      x, y = values
      if isinstance(x, float) or isinstance(y, float):
        x, y = int(x * width), int(y * height)
      points.append((x, y))
    elif len(values) == 4:
      x0, y0, x1, y1 = values
      if isinstance(x0, float):
        x0, y0, x1, y1 = int(x0 * width), int(y0 * height), int(x1 * width), int(y1 * height)
      if not all(isinstance(v, int) for v in (x0, y0, x1, y1)):
        # The public parser fails here (a float slice index) and skips the question.
        raise UnparsableAnswer(f"box ({group}) mixes pixel integers and normalised floats")
      box = np.zeros((height, width), bool)
      box[y0:y1, x0:x1] = True
      ys, xs = np.nonzero(box)
      points.extend(zip(xs.tolist(), ys.tolist()))
  return np.asarray(points, np.int64).reshape(-1, 2)


def where2place_score(text: str, mask: np.ndarray) -> dict:
  """{"score", "num_points", "parsed"} of one answer against a mask float [H, W] in [0, 1]."""
  height, width = mask.shape
  try:
    points = where2place_points(text, width, height)
  except UnparsableAnswer:
    return {"score": 0.0, "num_points": 0, "parsed": False}
  if len(points) == 0:
    return {"score": 0.0, "num_points": 0, "parsed": True}
  x, y = points[:, 0], points[:, 1]
  inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
  values = np.zeros(len(points), np.float64)
  values[inside] = mask[y[inside], x[inside]]
  return {"score": float(values.mean()), "num_points": int(len(points)), "parsed": True}


def point_in_polygon(x: float, y: float, polygon: Sequence[Sequence[float]]) -> bool:
  """Ray casting: True when (x, y) is inside the polygon [(x, y), ...]."""
  inside = False
  n = len(polygon)
  for i in range(n):
    xi, yi = polygon[i]
    xj, yj = polygon[i - 1]
    if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
      inside = not inside
  return inside


def first_point(text: str) -> tuple[float, float] | None:
  """RoboSpatial's first point of an answer, or None when it has none."""
  for pattern in (_TUPLE, _PAIR):
    match = pattern.search(text)
    if match:
      return float(match.group(1)), float(match.group(2))
  match = _LIST.search(text)
  if match is None:
    return None
  content = re.sub(r",(\S)", r", \1", match.group(1)).strip().removesuffix(",")
  try:
    value = ast.literal_eval("[" + content + "]")
  except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
    return None
  if len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
    point = value
  elif value and isinstance(value[0], (tuple, list)) and len(value[0]) == 2:
    point = value[0]
  else:
    return None
  try:
    return float(point[0]), float(point[1])
  except (TypeError, ValueError):
    return None


def robospatial_score(text: str, truth: str | list) -> dict:
  """{"score", "parsed", "kind"} of one RoboSpatial answer; truth "yes"/"no" or a polygon."""
  if isinstance(truth, str) and truth.strip().lower() in ("yes", "no"):
    answer = text.strip().lower()
    right = answer.startswith(truth.strip().lower())
    return {"score": float(right), "parsed": bool(answer), "kind": "binary"}
  point = first_point(text)
  if point is None:
    return {"score": 0.0, "parsed": False, "kind": "point"}
  return {"score": float(point_in_polygon(*point, polygon_of(truth))), "parsed": True, "kind": "point",
          "point": list(point)}


def polygon_of(truth: str | list) -> list[tuple[float, float]]:
  """The ground-truth polygon of a RoboSpatial point question (a list, or its Python literal)."""
  polygon = ast.literal_eval(truth) if isinstance(truth, str) else truth
  if not isinstance(polygon, (list, tuple)) or len(polygon) < 3 or not all(
      isinstance(p, (list, tuple)) and len(p) == 2 for p in polygon):
    raise ValueError(f"expected a polygon of >= 3 (x, y) points, got {truth!r}")
  return [(float(p[0]), float(p[1])) for p in polygon]
