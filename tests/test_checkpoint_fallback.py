"""Unreadable checkpoints, made by corrupting real checkpoint files: the loop names the checkpoint
and the item, and by default falls back to the newest readable checkpoint -- from which the run
continues exactly as an uninterrupted one -- or, with `checkpoint.fallback=False`, stops."""

import glob
import logging
import os
import shutil

import pytest

from roboalign_jax.train import debug
from roboalign_jax.train.checkpoint import CheckpointError
from roboalign_jax.train.metrics import latest_per_step, read_metrics

from configs_loader import load_config
from launch_helpers import checkpoint_steps

STEPS = 30


def _config(fallback=True):
  config = load_config(f"configs/debug.py:tiny,steps={STEPS}")
  config.checkpoint.update(every_steps=10, max_to_keep=5, fallback=fallback)
  config.train.log_every = 1
  config.evals = {}
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A complete run (checkpoints at 10, 20, 30) and its per-step losses."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  debug.train(_config(), workdir)
  return workdir, latest_per_step(read_metrics(workdir), "loss")


def _copy(workdir, tmp_path):
  target = str(tmp_path / "run")
  shutil.copytree(workdir, target)
  return target


def _corrupt_state(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(f) and "d" in os.path.relpath(f, step_dir).split(os.sep)[:-1]]
  assert files, os.listdir(os.path.join(step_dir, "state"))
  for path in files:
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 4, len(data), 7):
      data[i] ^= 0x5A
    open(path, "wb").write(bytes(data))


def _corrupt_metadata(step_dir):
  for path in glob.glob(os.path.join(step_dir, "metadata", "*")):
    if os.path.isfile(path):
      open(path, "wb").write(b"\xff\xfe\x00{not json")


def _drop_data_iter(step_dir):
  shutil.rmtree(os.path.join(step_dir, "data_iter"))


@pytest.mark.parametrize("damage, item", [(_corrupt_state, "state"), (_corrupt_metadata, "metadata"),
                                          (_drop_data_iter, "data_iter")])
def test_unreadable_latest_checkpoint_falls_back_and_resumes_exactly(finished, tmp_path, caplog, damage, item):
  reference, losses = finished
  workdir = _copy(reference, tmp_path)
  damage(os.path.join(workdir, "checkpoints", str(STEPS)))
  with caplog.at_level(logging.WARNING):
    summary = debug.train(_config(), workdir)
  warning = " ".join(r.getMessage() for r in caplog.records)
  assert f"checkpoints/{STEPS}" in warning and repr(item) in warning and "falling back" in warning
  assert summary["resumed_from"] == 20 and summary["step"] == STEPS
  rerun = [r for r in read_metrics(workdir) if r.get("event") == "resumed"]
  assert [r["step"] for r in rerun] == [20]
  # Steps 21..30 were taken again from checkpoint 20: the same losses as the first time.
  again = {}
  for record in read_metrics(workdir)[len(read_metrics(reference)):]:
    if "loss" in record:
      again[record["step"]] = record["loss"]
  assert sorted(again) == list(range(21, STEPS + 1))
  assert all(again[s] == losses[s] for s in again), {s: (again[s], losses[s]) for s in again}
  # The unreadable checkpoint was moved aside and replaced by a good one at the same step.
  assert checkpoint_steps(workdir) == [10, 20, 30]
  assert os.path.isdir(os.path.join(workdir, "checkpoints.unreadable", str(STEPS)))


def test_refusing_fallback_names_the_checkpoint_and_item(finished, tmp_path):
  reference, _ = finished
  workdir = _copy(reference, tmp_path)
  _corrupt_state(os.path.join(workdir, "checkpoints", str(STEPS)))
  with pytest.raises(CheckpointError, match=rf"checkpoints/{STEPS}: item 'state' is unreadable \(") as error:
    debug.train(_config(fallback=False), workdir)
  assert error.value.step == STEPS and error.value.item == "state"
  assert checkpoint_steps(workdir) == [10, 20, 30]  # nothing moved or deleted


def test_every_checkpoint_unreadable_starts_over(finished, tmp_path, caplog):
  reference, losses = finished
  workdir = _copy(reference, tmp_path)
  for step in (10, 20, 30):
    _drop_data_iter(os.path.join(workdir, "checkpoints", str(step)))
  with caplog.at_level(logging.WARNING):
    summary = debug.train(_config(), workdir)
  assert summary["resumed_from"] is None and summary["loss"] == losses[STEPS]
  assert sum("falling back" in r.getMessage() for r in caplog.records) == 3
