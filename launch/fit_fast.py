"""Fits a FAST action tokenizer on normalised action chunks and saves it in the public FAST layout.

From an array of chunks (float [N, H, D], normalised to [-1, 1], saved with `np.save`):
  python launch/fit_fast.py --chunks=bridge_chunks.npy --out=runs/fast_bridge --vocab_size=2048 --scale=10

Prints the vocabulary size, mean tokens per chunk, the compression ratio (H·D coefficients per
token) and the round-trip error, and writes the tokenizer directory (`FASTTokenizer.load`s it).
`--dataset` (fitting through the data pipeline, saved next to the dataset statistics) waits for
`roboalign_jax.data`; until then export the chunks to .npy.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("chunks", None, ".npy file of normalised action chunks, float [N, H, D].")
flags.DEFINE_string("dataset", None, "Dataset spec to draw chunks from (needs the data pipeline; not available yet).")
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


def main(argv):
  del argv
  if FLAGS.dataset is not None:
    raise app.UsageError("--dataset needs the data pipeline (roboalign_jax.data), which does not exist yet; "
                         "export normalised chunks to .npy and pass --chunks")
  if FLAGS.chunks is None:
    raise app.UsageError("pass --chunks=FILE.npy (float [N, H, D] normalised action chunks)")
  stats = fit(load_chunks(FLAGS.chunks), FLAGS.out, FLAGS.vocab_size, FLAGS.scale, FLAGS.max_chunks, FLAGS.seed)
  for key, value in stats.items():
    print(f"{key:>26}: {value:.4g}" if isinstance(value, float) else f"{key:>26}: {value}")
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
