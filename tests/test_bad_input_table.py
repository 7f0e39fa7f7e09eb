"""docs/bad_inputs.md stays true: at least 30 rows, every row names a test that exists, and every
quoted message fragment is text the package (or a launch script) actually writes."""

import glob
import os
import re

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "bad_inputs.md")
ROOT = os.path.dirname(DOC[:-len("/bad_inputs.md")])
SOURCES = ("roboalign_jax/**/*.py", "launch/*.py", "configs/*.py")


def _rows():
  rows = []
  for number, line in enumerate(open(DOC, encoding="utf-8"), 1):
    cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
    if not line.startswith("| ") or len(cells) != 3 or cells[0] in ("bad input", "---"):
      continue
    rows.append((number, *cells))
  return rows


def _source_text():
  # Messages are often split over adjacent string literals: join `"...abc "\n    "def..."` pieces so a
  # fragment spanning the split still matches.
  text = "\n".join(open(path, encoding="utf-8").read() for pattern in SOURCES
                   for path in glob.glob(os.path.join(ROOT, pattern), recursive=True))
  return re.sub(r"""["']\s*\n\s*f?r?["']""", "", text)


def test_the_table_has_at_least_30_rows_each_with_a_test_that_exists():
  rows = _rows()
  assert len(rows) >= 30, len(rows)
  missing = []
  for number, _, _, test in rows:
    match = re.fullmatch(r"(tests/test_\w+\.py)::(test_\w+)", test)
    assert match, f"docs/bad_inputs.md line {number}: {test!r} is not tests/<file>.py::<test>"
    path = os.path.join(ROOT, match[1])
    if not os.path.exists(path) or not re.search(rf"^(async )?def {match[2]}\(", open(path).read(), re.M):
      missing.append(f"line {number}: {test}")
  assert not missing, missing


def test_quoted_message_fragments_occur_in_the_source():
  source = _source_text()
  absent = [f"line {number}: `{fragment}`" for number, _, seen, _ in _rows()
            for fragment in re.findall(r"`([^`]+)`", seen) if fragment not in source]
  assert not absent, absent
