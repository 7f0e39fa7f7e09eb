"""The MLLM benchmarks' scoring rules against hand-worked cases (lmms-eval's MMStar and BLINK
rules, RoboPoint's Where2Place scorer, RoboSpatial-Eval's rules, the judge interface)."""

import numpy as np
import pytest

from roboalign_jax.eval.mllm import choice, judge, llava_jsonl, mmstar, pointing, where2place
from roboalign_jax.eval.mllm.examples import Example


@pytest.mark.parametrize("prediction, answer, expected", [
    ("B", "B", 1.0),
    ("b", "B", 1.0),                      # lowercase
    ("  B. A cat\n", "B", 1.0),            # first character after stripping
    ("(B) a cat", "B", 1.0),
    ("Option B", "B", 1.0),
    ("The answer is B", "B", 1.0),
    ("the answer is b.", "B", 1.0),
    ("The answer is (B).", "B", 0.0),     # only the character right after the prefix counts
    ("Because of the sky, A", "B", 1.0),  # the first-letter rule's false positive, kept as published
    ("Answer: B", "B", 0.0),
    ("", "B", 0.0),                        # no letter
    ("(", "B", 0.0),
    ("C", "B", 0.0),
])
def test_mmstar_rule(prediction, answer, expected):
  assert choice.mmstar_match(prediction, answer) == expected


@pytest.mark.parametrize("prediction, letter", [
    ("A", "A"), ("(B)", "B"), ("(b) closer", "B"), ("B.", "B"), ("  A) point A", "A"), ("a answer", "A"),
    ("The answer is (B).", "T"),  # extraction reads the start only
    ("", ""), ("(1)", ""), ("42", ""),
])
def test_blink_letter(prediction, letter):
  assert choice.blink_letter(prediction) == letter


def test_blink_match_strips_the_answer_parentheses():
  assert choice.blink_match("(B)", "(B)") == 1.0
  assert choice.blink_match("B", "(B)") == 1.0
  assert choice.blink_match("The answer is (B).", "(B)") == 0.0
  assert choice.blink_match("no letter here", "(A)") == 0.0  # "N" is extracted


def test_mmstar_aggregate_is_the_mean_over_dimensions():
  # Dimension x (capability P): 1/1 right; dimension y (P): 0/3; dimension z (Q): 1/2.
  examples, records = [], []
  for dim, cap, scores in [("x", "P", [1]), ("y", "P", [0, 0, 0]), ("z", "Q", [1, 0])]:
    for s in scores:
      examples.append(Example(id=str(len(examples)), prompt="", images=(), target="A", category=dim,
                              meta={"category": cap}))
      records.append({"score": float(s)})
  out = mmstar.aggregate(examples, records)
  assert out["dimensions"] == {"x": 100.0, "y": 0.0, "z": 50.0}
  assert out["capabilities"] == {"P": 50.0, "Q": 50.0}
  assert out["score"] == pytest.approx(50.0)  # not the 2/6 micro-average


def test_where2place_points_normalised_and_pixels():
  # Floats are normalised to the image size (int truncation), integers are pixels.
  np.testing.assert_array_equal(pointing.where2place_points("[(0.5, 0.25), (10, 20)]", 640, 480),
                                [[320, 120], [10, 20]])
  # One float makes the pair normalised; a 4-group is every pixel of the box.
  np.testing.assert_array_equal(pointing.where2place_points("(1, 0.5)", 640, 480), [[640, 240]])
  box = pointing.where2place_points("(1, 2, 3, 4)", 10, 10)
  assert sorted(map(tuple, box.tolist())) == [(1, 2), (1, 3), (2, 2), (2, 3)]
  assert pointing.where2place_points("nothing here (1, 2, 3)", 640, 480).shape == (0, 2)
  with pytest.raises(pointing.UnparsableAnswer, match="mixes"):
    pointing.where2place_points("(10, 20, 0.5, 0.5)", 640, 480)


def test_where2place_score():
  mask = np.zeros((480, 640))
  mask[:240, :320] = 1.0                       # top-left quarter
  mask[300, 400] = 0.5                         # a soft JPEG edge value
  assert pointing.where2place_score("[(0.25, 0.25)]", mask)["score"] == 1.0
  # two points: one inside, one outside the mask -> 0.5
  assert pointing.where2place_score("[(0.1, 0.1), (0.9, 0.9)]", mask)["score"] == 0.5
  # pixel ints: (100, 100) inside, (400, 300) soft 0.5, (700, 10) outside the image -> (1 + 0.5 + 0) / 3
  assert pointing.where2place_score("[(100, 100), (400, 300), (700, 10)]", mask)["score"] == pytest.approx(0.5)
  # negative coordinates are outside the image, not wrapped around
  assert pointing.where2place_score("[(-5, 10)]", mask)["score"] == 0.0
  none = pointing.where2place_score("I cannot tell.", mask)
  assert none == {"score": 0.0, "num_points": 0, "parsed": True}
  bad = pointing.where2place_score("[(10, 20, 0.5, 0.5)]", mask)   # the public parser raises on this box
  assert bad["score"] == 0.0 and bad["parsed"] is False


def test_where2place_aggregate_counts_unparsable():
  examples = [Example(id=str(k), prompt="", images=(), target="") for k in range(3)]
  records = [{"score": 1.0, "parsed": True, "num_points": 2}, {"score": 0.0, "parsed": False, "num_points": 0},
             {"score": 0.5, "parsed": True, "num_points": 0}]
  out = where2place.aggregate(examples, records)
  assert out["score"] == pytest.approx(50.0) and out["unparsable"] == 1 and out["num_examples"] == 3


@pytest.mark.parametrize("answer, truth, expected", [
    ("Yes, it fits.", "yes", 1.0), ("yes", "Yes", 1.0), ("  NO", "no", 1.0), ("No.", "yes", 0.0),
    ("It does not fit, no", "no", 0.0),        # prefix only
    ("", "yes", 0.0),
])
def test_robospatial_binary(answer, truth, expected):
  assert pointing.robospatial_score(answer, truth)["score"] == expected


SQUARE = "[(0.2, 0.2), (0.6, 0.2), (0.6, 0.6), (0.2, 0.6)]"


@pytest.mark.parametrize("answer, expected, parsed", [
    ("[(0.4, 0.4), (0.9, 0.9)]", 1.0, True),   # the first point decides
    ("[(0.9, 0.9), (0.4, 0.4)]", 0.0, True),
    ("Point: [0.3, 0.5]", 1.0, True),          # list pair
    ("(0.4,0.4)", 1.0, True),
    ("[[0.3, 0.3], [0.9, 0.9]]", 1.0, True),   # list of lists through the fallback
    ("somewhere on the left", 0.0, False),
])
def test_robospatial_point(answer, expected, parsed):
  out = pointing.robospatial_score(answer, SQUARE)
  assert out["score"] == expected and out["parsed"] is parsed


def test_point_in_polygon_concave():
  l_shape = [(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)]
  assert pointing.point_in_polygon(0.5, 1.5, l_shape)
  assert not pointing.point_in_polygon(1.5, 1.5, l_shape)
  with pytest.raises(ValueError, match="polygon"):
    pointing.polygon_of("[(0, 0), (1, 1)]")


def test_jsonl_exact_match():
  example = Example(id="0", prompt="", images=(), target="Red")
  assert llava_jsonl.exact_score(example, "red.")["score"] == 1.0
  assert llava_jsonl.exact_score(example, "<think>hmm</think><answer> red </answer>")["score"] == 1.0
  assert llava_jsonl.exact_score(example, "dark red")["score"] == 0.0


class WordOverlapJudgeForTests:
  """A deterministic rule-based test double of an LLM judge (0-3 by shared words); not a real judge."""
  max_score = 3.0

  def __call__(self, question, reference, answer):
    ref, ans = set(reference.lower().split()), set(answer.lower().split())
    return 3.0 * len(ref & ans) / max(len(ref), 1)


def test_judge_interface():
  double = WordOverlapJudgeForTests()
  assert isinstance(double, judge.Judge)
  assert judge.normalised_score(double, "q", "move the arm left", "move the arm left") == 1.0

  class OutOfRange:
    max_score = 3.0

    def __call__(self, question, reference, answer):
      return 5

  with pytest.raises(ValueError, match=r"expected a number in \[0, 3.0\]"):
    judge.normalised_score(OutOfRange(), "q", "r", "a")
  with pytest.raises(ValueError, match="package.module:attribute"):
    judge.load_judge("no_colon")
  with pytest.raises(ValueError, match="could not be imported"):
    judge.load_judge("roboalign_jax.nope:Judge")
  loaded = judge.load_judge("test_mllm_scorers:WordOverlapJudgeForTests")
  assert isinstance(loaded, WordOverlapJudgeForTests)
