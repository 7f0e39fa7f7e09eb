"""FAST codec throughput: our batched FASTTokenizer vs the reference's per-chunk approach.

  python benchmarks/fast_codec.py                      # 10k chunks, H=10, D=7, vocab 2048
  python benchmarks/fast_codec.py --horizon=50 --num_chunks=10000 --rounds=7

The reference approach is the public FAST processor's: for each chunk, SciPy's DCT, a `chr`
string and a `PreTrainedTokenizerFast` call to encode; `PreTrainedTokenizerFast.decode`, `ord`
and SciPy's inverse DCT to decode. Both sides use the same tokenizer files and the same chunks
in one run; outputs are checked to agree before timing.

One call encodes (or decodes) all --num_chunks chunks. Encoding, then decoding, is timed
interleaved (ours, reference, ours, reference, ... for --rounds rounds, after one untimed call of
each) so that load from other work hits both sides alike. Prints each side's median and minimum
time per call, chunks/s at the median, the ratio reference / ours of the medians (> 1: ours is
faster) and the load average.
"""

from __future__ import annotations

import tempfile

import numpy as np
import scipy.fft
from absl import app, flags
from timing import interleaved, load_line

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_chunks", 10_000, "Chunks to encode and decode.")
flags.DEFINE_integer("horizon", 10, "Chunk length H.")
flags.DEFINE_integer("action_dim", 7, "Action dimension D.")
flags.DEFINE_integer("vocab_size", 2048, "BPE vocabulary size.")
flags.DEFINE_integer("rounds", 5, "Interleaved timed calls of each side.")
flags.DEFINE_alias("repeats", "rounds")  # the flag's name before the timing was interleaved
flags.DEFINE_integer("seed", 0, "Data seed.")


def smooth_chunks(rng: np.random.Generator, num: int, horizon: int, dim: int) -> np.ndarray:
  """Normalised chunks [num, horizon, dim]: sinusoids or random walks, the last dim a binary gripper."""
  t = np.linspace(0.0, 1.0, horizon)[None, :, None]
  sines = rng.uniform(0.1, 0.9, (num, 1, dim)) * np.sin(
      2 * np.pi * rng.uniform(0.1, 1.5, (num, 1, dim)) * t + rng.uniform(0, 2 * np.pi, (num, 1, dim)))
  walks = np.clip(np.cumsum(rng.normal(0.0, 0.03, (num, horizon, dim)), axis=1) + rng.uniform(-0.5, 0.5, (num, 1, dim)),
                  -1, 1)
  chunks = np.where(rng.random((num, 1, 1)) < 0.5, sines, walks)
  switch = rng.integers(0, 2 * horizon, (num, 1))
  sign = rng.choice([-1.0, 1.0], (num, 1))
  chunks[..., -1] = np.where(np.arange(horizon)[None] < switch, sign, -sign)
  return chunks


class ReferenceCodec:
  """The per-chunk procedure of the public FAST processor, over a PreTrainedTokenizerFast."""

  def __init__(self, directory: str, scale: float, min_token: int):
    from transformers import AutoTokenizer
    self.bpe = AutoTokenizer.from_pretrained(directory)
    self.scale, self.min_token = scale, min_token

  def encode(self, chunks: np.ndarray) -> list[list[int]]:
    coeffs = np.around(scipy.fft.dct(chunks, axis=1, norm="ortho") * self.scale)
    return [self.bpe("".join(map(chr, np.maximum(c.flatten() - self.min_token, 0).astype(int))))["input_ids"]
            for c in coeffs]

  def decode(self, ids: list[list[int]], horizon: int, action_dim: int) -> np.ndarray:
    out = []
    for row in ids:
      try:
        coeffs = (np.array(list(map(ord, self.bpe.decode(row)))) + self.min_token).reshape(-1, action_dim)
        if coeffs.shape != (horizon, action_dim):
          raise ValueError("wrong length")
      except ValueError:
        coeffs = np.zeros((horizon, action_dim))
      out.append(scipy.fft.idct(coeffs / self.scale, axis=0, norm="ortho"))
    return np.stack(out)


def main(argv):
  del argv
  from roboalign_jax.fast import FASTTokenizer
  n, horizon, dim = FLAGS.num_chunks, FLAGS.horizon, FLAGS.action_dim
  rng = np.random.default_rng(FLAGS.seed)
  train = smooth_chunks(rng, 5000, horizon, dim)
  chunks = smooth_chunks(rng, n, horizon, dim)
  tokenizer = FASTTokenizer.fit(train, vocab_size=FLAGS.vocab_size, scale=10.0)
  with tempfile.TemporaryDirectory() as directory:
    tokenizer.save(directory)
    tokenizer = FASTTokenizer.load(directory)
    reference = ReferenceCodec(directory, tokenizer.scale, tokenizer.min_token)

  ids = tokenizer.encode(chunks)
  if ids != reference.encode(chunks):
    raise AssertionError("encodings differ from the reference procedure")
  # The reference zeroes malformed chunks (e.g. a held-out coefficient beyond the fitted range).
  decoded, valid = tokenizer.decode(ids, horizon, dim, on_malformed="zeros", return_valid=True)
  if not np.allclose(decoded, reference.decode(ids, horizon, dim), rtol=0, atol=1e-9):
    raise AssertionError("decodings differ from the reference procedure")

  timings = {
      "encode": interleaved({"ours": lambda: tokenizer.encode(chunks),
                             "reference": lambda: reference.encode(chunks)}, FLAGS.rounds),
      "decode": interleaved({"ours": lambda: tokenizer.decode(ids, horizon, dim),
                             "reference": lambda: reference.decode(ids, horizon, dim)}, FLAGS.rounds)}

  mean_tokens = np.mean([len(row) for row in ids])
  print(f"{n} chunks [H={horizon}, D={dim}], vocab {tokenizer.bpe.get_vocab_size()}, "
        f"{mean_tokens:.1f} tokens/chunk (compression {horizon * dim / mean_tokens:.2f}x), "
        f"{int((~valid).sum())} malformed, {FLAGS.rounds} interleaved rounds, {load_line()}")
  for name, times in timings.items():
    ours, ref = times["ours"], times["reference"]
    print(f"{name}: ours median {ours['median'] * 1e3:8.1f} ms  min {ours['min'] * 1e3:8.1f} ms "
          f"({n / ours['median']:10,.0f} chunks/s) | reference median {ref['median'] * 1e3:8.1f} ms  "
          f"min {ref['min'] * 1e3:8.1f} ms ({n / ref['median']:10,.0f} chunks/s) | "
          f"reference/ours {ref['median'] / ours['median']:.1f}x")


if __name__ == "__main__":
  app.run(main)
