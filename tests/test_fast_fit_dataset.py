"""`launch/fit_fast.py --dataset`: fits FAST through the data pipeline on a real TFDS fixture and
saves the normalisation statistics beside the tokenizer."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs_loader import REPO_ROOT
from roboalign_jax import data
from roboalign_jax.data.pipeline import action_chunks
from roboalign_jax.fast import FASTTokenizer

pytestmark = pytest.mark.slow


def test_fit_from_dataset(tmp_path):
  path = data.write_fixture("libero", str(tmp_path / "libero"), num_episodes=3, seed=0)
  cache = str(tmp_path / "cache")
  out = tmp_path / "fast"
  run = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "launch", "fit_fast.py"),
                        f"--dataset=libero:{path}", "--horizon=8", "--vocab_size=300",
                        f"--cache_dir={cache}", f"--out={out}"],
                       capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  tokenizer = FASTTokenizer.load(out)
  statistics = json.loads((out / "dataset_statistics.json").read_text())
  assert list(statistics) == ["libero"]
  # The tokenizer was fitted on exactly the pipeline's normalised chunks (same cache, same stats).
  handles = data.open_datasets(data.data_config(datasets=[data.dataset_entry("libero", path)],
                                                cache_dir=cache, action_horizon=8, progress=False))
  chunks = action_chunks(handles, 8)
  assert chunks.shape[1:] == (8, 7) and np.abs(chunks).max() <= 1.0 + 1e-6
  decoded, valid = tokenizer.decode(tokenizer.encode(chunks), horizon=8, action_dim=7, return_valid=True)
  assert valid.all()
  assert np.abs(decoded - chunks).max() <= 0.5 * np.sqrt(8) / tokenizer.scale
  assert f"chunks: {len(chunks)}" in " ".join(run.stdout.split())


def test_dataset_argument_must_name_a_spec(tmp_path):
  run = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "launch", "fit_fast.py"),
                        "--dataset=/no/spec/here", f"--out={tmp_path / 'fast'}"],
                       capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
  assert run.returncode != 0 and "expected SPEC:PATH" in run.stderr
