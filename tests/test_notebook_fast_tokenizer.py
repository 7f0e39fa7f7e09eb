"""notebooks/fast_tokenizer.ipynb runs top to bottom on a bridge fixture, and what it measured holds."""

import math

import numpy as np
import pytest

import notebook_runner

pytestmark = pytest.mark.slow


def test_fast_tokenizer_notebook(tmp_path):
  summary, seconds = notebook_runner.run_notebook("fast_tokenizer", parameters={"WORKDIR": str(tmp_path)})
  print(f"\nfast_tokenizer.ipynb ran in {seconds:.1f} s")
  horizon, scale = 16, summary["scale"]

  # One chunk [16, 7] per step of the fixture; the tokenizer it fitted and saved reproduces them.
  assert summary["chunk_shape"] == [summary["num_steps"], horizon, 7]
  assert (tmp_path / "fast" / "tokenizer.json").is_file() and (tmp_path / "fast" / "processor_config.json").is_file()
  assert summary["valid_fraction"] == 1.0
  assert 0 < summary["rmse"] <= 0.5 / scale == summary["rmse_bound"]
  assert summary["max_abs_error"] <= math.sqrt(2 * horizon) * 0.5 / scale
  assert summary["max_id"] < summary["bpe_vocab"] <= summary["vocab_size"]
  # FAST compresses: far fewer tokens than the 112 coefficients of a chunk.
  assert summary["compression_ratio"] > 2 and summary["max_tokens_per_chunk"] < horizon * 7
  assert summary["mean_tokens_per_chunk"] * summary["compression_ratio"] == pytest.approx(horizon * 7)

  # Precision costs tokens: less error as the scale grows, and far more tokens at the largest scale
  # than at the fitted one. (Not monotone at small scales: see the notebook on pre-tokenizer pieces.)
  scales, tokens, errors = summary["scales"], summary["tokens_per_chunk_by_scale"], summary["rmse_by_scale"]
  assert len(tokens) == len(scales) >= 3 and max(scales) > scale
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  assert all(e <= 0.5 / s for e, s in zip(errors, scales))
  assert tokens[scales.index(max(scales))] > 1.5 * tokens[scales.index(scale)], tokens
  assert tokens[scales.index(scale)] == pytest.approx(summary["mean_tokens_per_chunk"])
  # A BPE token never spans two pre-tokenizer pieces.
  assert all(t >= p >= 1 for t, p in zip(tokens, summary["pieces_per_chunk_by_scale"]))
  # Longer chunks cost more tokens, and each setting reconstructs within the rounding bound.
  by_h, horizons = summary["tokens_per_chunk_by_horizon"], summary["horizons"]
  assert all(a < b for a, b in zip(by_h, by_h[1:])), by_h
  assert all(t >= p >= 1 for t, p in zip(by_h, summary["pieces_per_chunk_by_horizon"]))
  assert all(e <= 0.5 / scale for e in summary["rmse_by_horizon"])
  assert by_h[horizons.index(horizon)] == pytest.approx(summary["mean_tokens_per_chunk"])

  # Malformed ids decode to finite [H, D] chunks, flagged invalid; only the real sequence is valid.
  malformed = summary["malformed"]
  assert set(malformed) >= {"valid", "empty", "truncated (first half)", "out-of-vocabulary ids",
                            "random in-vocabulary ids", "non-integers", "too long (two chunks)"}
  for name, case in malformed.items():
    assert case["shape"] == [horizon, 7] and case["finite"] == 1, name
    assert case["valid"] == (name == "valid"), name
  assert malformed["valid"]["rmse_to_chunk"] <= 0.5 / scale
  assert malformed["empty"]["max_abs"] == 0.0
  # Dropping the out-of-vocabulary ids leaves the real sequence: the same chunk, though flagged.
  assert malformed["out-of-vocabulary ids"]["rmse_to_chunk"] == pytest.approx(malformed["valid"]["rmse_to_chunk"])
  assert malformed["truncated (first half)"]["rmse_to_chunk"] > malformed["valid"]["rmse_to_chunk"]
  assert np.isfinite([case["max_abs"] for case in malformed.values()]).all()
