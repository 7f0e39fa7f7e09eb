"""`make demo`'s driver end to end (the quick stages): report, metrics and a learning signal."""

import json
import os
import subprocess
import sys

import pytest

import launch_helpers
from configs_loader import REPO_ROOT

pytestmark = pytest.mark.slow


def test_demo_debug_stage_writes_report(tmp_path):
  workdir = tmp_path / "demo"
  proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "launch", "demo.py"),
                         f"--workdir={workdir}", "--stages=debug"], cwd=REPO_ROOT,
                        env=launch_helpers.subprocess_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Report: {workdir}/report.md" in proc.stdout
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["debug.final_loss"] < 0.05 * metrics["debug.initial_loss"]
  assert metrics["debug.eval_accuracy"] > 0.99  # chance is 1/64
  assert metrics["wall_seconds"] > 0
  report = (workdir / "report.md").read_text()
  assert "## Debug stage" in report and (workdir / "debug_loss.png").stat().st_size > 1000


def test_demo_rejects_unknown_stage(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "launch", "demo.py"),
                         f"--workdir={tmp_path}", "--stages=debug,sfft"], cwd=REPO_ROOT,
                        env=launch_helpers.subprocess_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0 and "unknown --stages ['sfft']" in proc.stderr
