"""A run report: `report.md` (metrics table + curve images) and `metrics.json` (flat keys like
`debug.final_loss`) in one directory, for `make demo` and for comparing runs."""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

# A Figure without pyplot renders through Agg into files and leaves the process's backend alone
# (a notebook importing the demo stages keeps its inline plots; no display needed on servers or CI).
from matplotlib.figure import Figure


def plot_curves(path: str, curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], *,
                title: str, ylabel: str, logy: bool = False) -> str:
  """Saves one PNG with a line per named curve `(steps, values)`. Returns the path."""
  fig = Figure(figsize=(6, 3.5), dpi=100)
  ax = fig.subplots()
  for name, (steps, values) in curves.items():
    ax.plot(list(steps), list(values), label=name)
  ax.set(title=title, xlabel="step", ylabel=ylabel)
  if logy:
    ax.set_yscale("log")
  ax.grid(alpha=0.3)
  if len(curves) > 1:
    ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  return path


def write_report(out_dir: str, *, title: str, metrics: Mapping[str, float | int | str],
                 sections: Sequence[tuple[str, str, Sequence[str]]]) -> str:
  """Writes `metrics.json` and `report.md`.

  sections: (heading, markdown text, image paths relative to `out_dir`) per stage.
  Returns the path of `report.md`.
  """
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(dict(metrics), f, indent=2, sort_keys=True)
  lines = [f"# {title}", "", "| metric | value |", "| --- | --- |"]
  for key in sorted(metrics):
    value = metrics[key]
    lines.append(f"| `{key}` | {value:.6g} |" if isinstance(value, float) else f"| `{key}` | {value} |")
  for heading, text, images in sections:
    lines += ["", f"## {heading}", "", text]
    lines += [f"![{os.path.basename(p)}]({p})" for p in images]
  path = os.path.join(out_dir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path
