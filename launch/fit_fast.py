"""Fits a FAST action tokenizer on normalised action chunks and saves it in the public FAST layout.

From an array of chunks (float [N, H, D], normalised to [-1, 1], saved with `np.save`):
  python launch/fit_fast.py --chunks=bridge_chunks.npy --out=runs/fast_bridge --vocab_size=2048 --scale=10

Or through the data pipeline, from RLDS datasets (every step's chunk, normalised with the
dataset's q01/q99 statistics exactly as training normalises them):
  python launch/fit_fast.py --dataset=bridge:/data/bridge_dataset/1.0.0 --horizon=16 --out=runs/fast_bridge

Prints the vocabulary size, mean tokens per chunk, the compression ratio (H·D coefficients per
token) and the round-trip error, and writes the tokenizer directory (`FASTTokenizer.load`s it).
With --dataset, the statistics the chunks were normalised with are saved beside the tokenizer
(`dataset_statistics.json`), so the pair travels together.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("chunks", None, ".npy file of normalised action chunks, float [N, H, D].")
flags.DEFINE_multi_string("dataset", [], "SPEC:PATH of an RLDS dataset to draw chunks from (repeatable), "
                          "e.g. libero:/data/libero_10_no_noops/1.0.0.")
flags.DEFINE_integer("horizon", 16, "Action chunk length H when fitting from --dataset.")
flags.DEFINE_string("cache_dir", "", "Step-index/statistics cache for --dataset (default: the data pipeline's).")
flags.DEFINE_string("out", None, "Directory to write the tokenizer to.", required=True)
flags.DEFINE_integer("vocab_size", 2048, "BPE vocabulary size (RoboAlign: 2048, one <action_k> token per id).")
flags.DEFINE_float("scale", 10.0, "DCT coefficients are multiplied by this before rounding.")
flags.DEFINE_integer("max_chunks", None, "Fit on a random subset of this many chunks (all when unset).")
flags.DEFINE_integer("seed", 0, "Seed for the --max_chunks subset.")


def load_chunks(path: str) -> np.ndarray:
  """Reads float [N, H, D] chunks from a .npy file (no pickled objects)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--chunks file {path} does not exist")
  try:
    chunks = np.load(path, allow_pickle=False)
  except ValueError as error:
    raise ValueError(f"{path} is not a plain numeric .npy array: {error}") from error
  if chunks.ndim != 3 or chunks.dtype.kind != "f" or 0 in chunks.shape:
    raise ValueError(f"{path} must hold float chunks [N, H, D], got {chunks.dtype} {chunks.shape}")
  return chunks


def fit(chunks: np.ndarray, out: str, vocab_size: int, scale: float, max_chunks: int | None = None,
        seed: int = 0) -> dict[str, float]:
  """Fits, saves to `out` and returns the statistics it prints."""
  from roboalign_jax.fast import FASTTokenizer
  if max_chunks is not None and max_chunks < len(chunks):
    chunks = chunks[np.sort(np.random.default_rng(seed).choice(len(chunks), max_chunks, replace=False))]
  start = time.perf_counter()
  tokenizer = FASTTokenizer.fit(chunks, vocab_size=vocab_size, scale=scale)
  fit_seconds = time.perf_counter() - start
  tokenizer.save(out)
  ids = tokenizer.encode(chunks)
  horizon, action_dim = chunks.shape[1:]
  decoded, valid = tokenizer.decode(ids, horizon=horizon, action_dim=action_dim, return_valid=True)
  mean_tokens = float(np.mean([len(row) for row in ids]))
  return {
      "chunks": len(chunks),
      "horizon": horizon,
      "action_dim": action_dim,
      "vocab_size": tokenizer.bpe.get_vocab_size(),
      "min_token": tokenizer.min_token,
      "mean_tokens_per_chunk": mean_tokens,
      "max_tokens_per_chunk": max(len(row) for row in ids),
      "compression_ratio": horizon * action_dim / mean_tokens,
      "max_abs_round_trip_error": float(np.abs(decoded - chunks).max()),
      "decoded_valid_fraction": float(valid.mean()),
      "fit_seconds": fit_seconds,
  }


def dataset_chunks(specs: list[str], horizon: int, cache_dir: str) -> tuple[np.ndarray, dict]:
  """Normalised chunks [N, horizon, 7] of every step of the given `SPEC:PATH` datasets, and the
  statistics they were normalised with."""
  from roboalign_jax import data
  from roboalign_jax.data.pipeline import action_chunks, dataset_statistics
  entries = []
  for item in specs:
    spec, sep, path = item.partition(":")
    if not sep or not path:
      raise app.UsageError(f"--dataset={item}: expected SPEC:PATH with SPEC in {sorted(data.SPECS)}")
    entries.append(data.dataset_entry(spec, path))
  handles = data.open_datasets(data.data_config(datasets=entries, cache_dir=cache_dir, action_horizon=horizon))
  return action_chunks(handles, horizon), dataset_statistics(handles)


def main(argv):
  del argv
  if bool(FLAGS.dataset) == (FLAGS.chunks is not None):
    raise app.UsageError("pass exactly one of --chunks=FILE.npy (float [N, H, D] normalised action chunks) "
                         "or --dataset=SPEC:PATH")
  if FLAGS.dataset:
    chunks, statistics = dataset_chunks(FLAGS.dataset, FLAGS.horizon, FLAGS.cache_dir)
  else:
    chunks, statistics = load_chunks(FLAGS.chunks), None
  stats = fit(chunks, FLAGS.out, FLAGS.vocab_size, FLAGS.scale, FLAGS.max_chunks, FLAGS.seed)
  if statistics is not None:
    with open(os.path.join(FLAGS.out, "dataset_statistics.json"), "w") as f:
      json.dump(statistics, f, indent=2)
  for key, value in stats.items():
    print(f"{key:>26}: {value:.4g}" if isinstance(value, float) else f"{key:>26}: {value}")
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
