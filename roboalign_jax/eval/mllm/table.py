"""The results table in the shape of the paper's Table 8: rows = models, columns = benchmarks,
cells = headline scores (%, 2 decimals in Markdown); `results.json` also keeps every benchmark's
breakdown (categories, unparsable answers, ...)."""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

# Column titles as the paper prints them.
TITLES = {"mmstar": "MMStar", "robospatial": "RoboSpatial", "where2place": "Where2Place",
          "blink_depth": "BLINK (depth)", "robot_r1": "Robot-R1 Bench", "jsonl": "JSONL"}


def markdown(models: Sequence[str], benchmarks: Sequence[str], details: Mapping[str, Mapping[str, dict]]) -> str:
  header = "| Model | " + " | ".join(TITLES.get(b, b) for b in benchmarks) + " |"
  rule = "|---|" + "---:|" * len(benchmarks)
  rows = []
  for model in models:
    cells = [f"{details[model][b]['score']:.2f}" if b in details.get(model, {}) else "–" for b in benchmarks]
    rows.append(f"| {model} | " + " | ".join(cells) + " |")
  return "\n".join([header, rule, *rows]) + "\n"


def write(out_dir: str, models: Sequence[str], benchmarks: Sequence[str], details: Mapping[str, Mapping[str, dict]],
          *, sources: Mapping[str, str], model_dirs: Mapping[str, str], generation: str) -> dict:
  """Writes `results.json` and `results.md` under `out_dir`; returns the JSON object."""
  os.makedirs(out_dir, exist_ok=True)
  result = {"models": list(models), "benchmarks": list(benchmarks),
            "scores": {m: {b: details[m][b]["score"] for b in benchmarks if b in details[m]} for m in models},
            "details": {m: dict(details[m]) for m in models},
            "sources": dict(sources), "model_dirs": dict(model_dirs), "generation": generation}
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write("# MLLM benchmarks (Table 8 layout)\n\n" + markdown(models, benchmarks, details))
  return result
