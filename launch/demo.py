"""`make demo`: the tiny end-to-end pipeline on a 2-core CPU, ending in a report.

  python launch/demo.py --workdir=runs/demo
  python launch/demo.py --workdir=runs/demo --stages=debug      # a subset, in pipeline order

Each stage (`roboalign_jax/demo/<stage>_stage.py`) trains for real on tiny models and embedded
data and adds its metrics and a report section. Writes `<workdir>/report.md`,
`<workdir>/metrics.json` (flat keys such as `debug.final_loss`, plus `wall_seconds`) and curve PNGs.
"""

import importlib
import os
import shutil
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from roboalign_jax.eval import report  # noqa: E402
from roboalign_jax.train import log_filters  # noqa: E402

# Pipeline order; a stage may use what earlier ones put in the shared context.
STAGES = ("debug", "sft", "grpo", "vla", "probe")

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where the demo writes its runs and report.")
_FRESH = flags.DEFINE_bool("fresh", True, "Delete earlier demo runs first, so the report is of this run.")
_STAGES = flags.DEFINE_list("stages", list(STAGES), f"Stages to run, from {list(STAGES)}.")


def main(argv):
  del argv
  unknown = set(_STAGES.value) - set(STAGES)
  if unknown:
    raise app.UsageError(f"unknown --stages {sorted(unknown)}; allowed: {list(STAGES)}")
  log_filters.quiet_library_logs()
  workdir = os.path.abspath(_WORKDIR.value)
  if _FRESH.value and os.path.isdir(workdir):
    shutil.rmtree(workdir)
  os.makedirs(workdir, exist_ok=True)
  started = time.time()
  context, metrics, sections = {"workdir": workdir}, {}, []
  for stage in (s for s in STAGES if s in _STAGES.value):
    stage_started = time.time()
    stage_metrics, section = importlib.import_module(f"roboalign_jax.demo.{stage}_stage").run(context)
    metrics.update(stage_metrics)
    metrics[f"{stage}.wall_seconds"] = round(time.time() - stage_started, 1)
    sections.append(section)
  metrics["wall_seconds"] = round(time.time() - started, 1)
  path = report.write_report(workdir, title="roboalign_jax demo", metrics=metrics, sections=sections)
  print(f"\nDemo finished in {metrics['wall_seconds']} s. Report: {path}")


if __name__ == "__main__":
  app.run(main)
