"""FASTTokenizer: round trip, compression, equivalence with the public FAST release's procedure
and file format, save/load, and tolerant decoding of malformed ids.

The reference procedure below is written out from the public release's processor
(`physical-intelligence/fast`, `processing_action_tokenizer.py`): SciPy DCT per chunk, `chr`
strings, `ByteLevelBPETokenizer` trained through `BpeTrainer`, wrapped in transformers'
`PreTrainedTokenizerFast`, per-chunk encode/decode.
"""

import json

import numpy as np
import pytest
import scipy.fft
from tokenizers import ByteLevelBPETokenizer, Tokenizer, decoders, models
from tokenizers.trainers import BpeTrainer

from roboalign_jax.fast import FASTTokenizer, dct


def action_chunks(rng, num, horizon, dim=7):
  """Smooth normalised chunks [num, horizon, dim]: sinusoids or random walks, last dim a binary gripper."""
  t = np.linspace(0.0, 1.0, horizon)[None, :, None]
  sines = rng.uniform(0.1, 0.9, (num, 1, dim)) * np.sin(
      2 * np.pi * rng.uniform(0.1, 1.5, (num, 1, dim)) * t + rng.uniform(0, 2 * np.pi, (num, 1, dim)))
  walks = np.clip(np.cumsum(rng.normal(0.0, 0.03, (num, horizon, dim)), axis=1) + rng.uniform(-0.5, 0.5, (num, 1, dim)),
                  -1, 1)
  chunks = np.where(rng.random((num, 1, 1)) < 0.5, sines, walks)
  switch = rng.integers(0, 2 * horizon, (num, 1))  # switches inside the chunk about half the time
  sign = rng.choice([-1.0, 1.0], (num, 1))
  chunks[..., -1] = np.where(np.arange(horizon)[None] < switch, sign, -sign)
  return chunks


# ---------------------------------------------------------------------- the reference procedure


def reference_fit(chunks, scale, vocab_size):
  """Fit as the public release does; returns (PreTrainedTokenizerFast, min_token)."""
  from transformers import PreTrainedTokenizerFast
  coeffs = [scipy.fft.dct(a, axis=0, norm="ortho").flatten() for a in chunks]
  max_token = int(np.around(np.concatenate(coeffs) * scale).max())
  min_token = int(np.around(np.concatenate(coeffs) * scale).min())
  texts = ("".join(map(chr, (np.around(c * scale) - min_token).astype(int))) for c in coeffs)
  bpe = ByteLevelBPETokenizer()
  trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
                       initial_alphabet=[chr(i) for i in range(max_token - min_token + 1)], max_token_length=10000)
  bpe._tokenizer.train_from_iterator(texts, trainer=trainer)
  return PreTrainedTokenizerFast(tokenizer_object=bpe, clean_up_tokenization_spaces=False), min_token


def reference_encode(bpe_tokenizer, chunks, scale, min_token):
  coeffs = np.around(scipy.fft.dct(chunks, axis=1, norm="ortho") * scale)
  return [bpe_tokenizer("".join(map(chr, np.maximum(c.flatten() - min_token, 0).astype(int))))["input_ids"]
          for c in coeffs]


def reference_decode(bpe_tokenizer, ids, scale, min_token, horizon, action_dim):
  out = []
  for row in ids:
    try:
      coeffs = (np.array(list(map(ord, bpe_tokenizer.decode(row)))) + min_token).reshape(-1, action_dim)
      assert coeffs.shape == (horizon, action_dim)
    except Exception:
      coeffs = np.zeros((horizon, action_dim))
    out.append(scipy.fft.idct(coeffs / scale, axis=0, norm="ortho"))
  return np.stack(out)


def widen_range(chunks):
  """Two large-amplitude chunks stretch the quantised range to [-354, ≥120] (at scale 10), like
  the public universal tokenizer's: most coefficients then become 2-byte UTF-8 characters."""
  chunks = chunks.copy()
  chunks[0, :, 0] = -35.4 / np.sqrt(chunks.shape[1])
  chunks[1, :, 1] = 12.0 / np.sqrt(chunks.shape[1])
  return chunks


@pytest.fixture(scope="module")
def fitted():
  """(tokenizer, train chunks, held-out chunks), H = 10, D = 7, min_token = -354."""
  rng = np.random.default_rng(0)
  train, held_out = widen_range(action_chunks(rng, 1500, 10)), action_chunks(rng, 300, 10)
  return FASTTokenizer.fit(train, vocab_size=1024, scale=10.0), train, held_out


# ---------------------------------------------------------------------- round trip and compression


@pytest.mark.parametrize("horizon", [10, 16, 50])
def test_round_trip_error_is_bounded_and_smooth_chunks_compress(horizon, record_property):
  scale = 10.0
  chunks = action_chunks(np.random.default_rng(horizon), 600, horizon)
  # Fit on the chunks being encoded: the bound holds when no coefficient is clipped at min_token.
  tokenizer = FASTTokenizer.fit(chunks, vocab_size=1024, scale=scale)
  ids = tokenizer.encode(chunks)
  decoded, valid = tokenizer.decode(ids, horizon=horizon, action_dim=7, return_valid=True)
  assert decoded.shape == chunks.shape and valid.all()
  # Each coefficient is off by at most 0.5/scale; an orthonormal inverse spreads that to at
  # most √H·0.5/scale per entry (Cauchy–Schwarz on a unit column).
  error = np.abs(decoded - chunks).max()
  assert error <= 0.5 * np.sqrt(horizon) / scale + 1e-9
  # The quantised coefficients come back exactly.
  np.testing.assert_array_equal(np.rint(dct.dct_numpy(decoded) * scale), np.rint(dct.dct_numpy(chunks) * scale))
  ratio = chunks[0].size / np.mean([len(row) for row in ids])
  record_property(f"compression_ratio_H{horizon}", float(ratio))  # a plain float: xdist ships it between processes
  print(f"H={horizon}: compression {ratio:.2f}x, max error {error:.4f}")
  assert ratio > 2


# ---------------------------------------------------------------------- equivalence with the reference


def test_fit_encode_decode_match_the_reference_procedure(fitted):
  tokenizer, train, held_out = fitted
  reference, min_token = reference_fit(train, scale=10.0, vocab_size=1024)
  assert tokenizer.min_token == min_token == -354
  # Same trained BPE, merge for merge.
  assert tokenizer.bpe.to_str() == reference.backend_tokenizer.to_str()
  ids = tokenizer.encode(held_out)
  assert ids == reference_encode(reference, held_out, 10.0, min_token)
  # Decoding well-formed ids agrees with the reference; on malformed ones "zeros" mode does.
  np.testing.assert_allclose(tokenizer.decode(ids, horizon=10, action_dim=7),
                             reference_decode(reference, ids, 10.0, min_token, 10, 7), rtol=0, atol=1e-12)
  broken = [ids[0][:-1], [], ids[1] + ids[2][:3], ids[3]]
  np.testing.assert_allclose(tokenizer.decode(broken, horizon=10, action_dim=7, on_malformed="zeros"),
                             reference_decode(reference, broken, 10.0, min_token, 10, 7), rtol=0, atol=1e-12)


def test_chunks_with_varying_shapes_fit_like_the_reference():
  rng = np.random.default_rng(1)
  chunks = list(action_chunks(rng, 200, 10, dim=7)) + list(action_chunks(rng, 200, 20, dim=3))
  reference, min_token = reference_fit(chunks, scale=10.0, vocab_size=300)
  tokenizer = FASTTokenizer.fit(chunks, vocab_size=300, scale=10.0)
  assert tokenizer.min_token == min_token
  assert tokenizer.bpe.to_str() == reference.backend_tokenizer.to_str()


def write_public_release_copy(directory, chunks):
  """A directory laid out like `physical-intelligence/fast` (scale 10, vocab 2048, min_token -354),
  its tokenizer trained by the reference procedure and its files written as the release has them."""
  directory.mkdir()
  reference, min_token = reference_fit(chunks, scale=10, vocab_size=2048)
  assert min_token == -354
  reference.backend_tokenizer.save(str(directory / "tokenizer.json"))
  (directory / "processor_config.json").write_text(json.dumps({
      "action_dim": None,
      "auto_map": {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"},
      "min_token": -354,
      "processor_class": "UniversalActionProcessor",
      "scale": 10,
      "time_horizon": None,
      "vocab_size": 2048,
  }, indent=2))
  (directory / "tokenizer_config.json").write_text(json.dumps({
      "added_tokens_decoder": {},
      "clean_up_tokenization_spaces": False,
      "model_max_length": 1000000000000000019884624838656,
      "tokenizer_class": "PreTrainedTokenizerFast",
  }))
  (directory / "special_tokens_map.json").write_text("{}")
  (directory / "processing_action_tokenizer.py").write_text("# the public processor; never imported here\n")
  return reference


def test_loads_a_copy_of_the_public_universal_tokenizer(tmp_path):
  from transformers import AutoTokenizer
  rng = np.random.default_rng(2)
  train = widen_range(action_chunks(rng, 1500, 10))
  write_public_release_copy(tmp_path / "fast", train)
  tokenizer = FASTTokenizer.load(tmp_path / "fast")
  assert (tokenizer.scale, tokenizer.vocab_size, tokenizer.min_token) == (10, 2048, -354)
  # The reference processor loads its BPE with AutoTokenizer from the same directory.
  bpe_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "fast"))
  held_out = action_chunks(rng, 200, 10)
  ids = tokenizer.encode(held_out)
  assert ids == reference_encode(bpe_tokenizer, held_out, 10, -354)
  np.testing.assert_allclose(tokenizer.decode(ids, horizon=10, action_dim=7),
                             reference_decode(bpe_tokenizer, ids, 10, -354, 10, 7), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- save / load


def test_save_load_round_trip_writes_the_public_layout(fitted, tmp_path):
  from transformers import AutoTokenizer
  tokenizer, _, held_out = fitted
  tokenizer.save(tmp_path / "tok")
  config = json.loads((tmp_path / "tok" / "processor_config.json").read_text())
  assert config == {
      "action_dim": None,
      "auto_map": {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"},
      "min_token": tokenizer.min_token,
      "processor_class": "UniversalActionProcessor",
      "scale": 10,
      "time_horizon": None,
      "vocab_size": 1024,
  }
  loaded = FASTTokenizer.load(tmp_path / "tok")
  ids = tokenizer.encode(held_out)
  assert loaded.encode(held_out) == ids
  np.testing.assert_array_equal(loaded.decode(ids, horizon=10, action_dim=7), tokenizer.decode(ids, 10, 7))
  # The directory is also what transformers (and so the public processor) reads.
  bpe_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
  assert ids == reference_encode(bpe_tokenizer, held_out, 10.0, tokenizer.min_token)


def test_loading_a_bad_directory_is_a_clear_error(fitted, tmp_path):
  tokenizer, _, _ = fitted
  with pytest.raises(FileNotFoundError, match="processor_config.json is missing"):
    FASTTokenizer.load(tmp_path)
  tokenizer.save(tmp_path / "a")
  (tmp_path / "a" / "tokenizer.json").unlink()
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    FASTTokenizer.load(tmp_path / "a")
  tokenizer.save(tmp_path / "b")
  (tmp_path / "b" / "processor_config.json").write_text('{"scale": 10, "vocab_size": 1024}')
  with pytest.raises(ValueError, match="lacks \\['min_token'\\]"):
    FASTTokenizer.load(tmp_path / "b")
  (tmp_path / "b" / "processor_config.json").write_text('{"scale": -1, "vocab_size": 1024, "min_token": 0}')
  with pytest.raises(ValueError, match="scale must be a positive"):
    FASTTokenizer.load(tmp_path / "b")
  (tmp_path / "b" / "processor_config.json").write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    FASTTokenizer.load(tmp_path / "b")


# ---------------------------------------------------------------------- tolerant decoding


def test_malformed_ids_decode_to_the_right_shape_and_are_flagged(fitted):
  tokenizer, _, held_out = fitted
  good = tokenizer.encode(held_out[:3])
  num_ids = tokenizer.bpe.get_vocab_size()
  # The byte-level token for 0xC5 alone is a UTF-8 lead byte without its continuation byte.
  lone_lead = tokenizer.bpe.token_to_id(chr(0xC5))
  batch = [
      good[0],  # 0: fine
      [],  # 1: empty
      good[1] + good[2],  # 2: too long
      good[1][:-2],  # 3: too short
      good[0][:2] + [num_ids + 5] + good[0][2:],  # 4: out of range
      [-1] + good[0],  # 5: negative
      [151665 + i for i in good[0]],  # 6: MLLM token ids, another vocabulary
      good[0][:3] + [1.5] + good[0][3:],  # 7: not an integer
      [lone_lead] + good[0],  # 8: invalid UTF-8
      None,  # 9: not a sequence
      np.asarray(good[2]),  # 10: fine, as an array
  ]
  for mode in ("pad", "zeros"):
    actions, valid = tokenizer.decode(batch, horizon=10, action_dim=7, on_malformed=mode, return_valid=True)
    assert actions.shape == (len(batch), 10, 7) and np.isfinite(actions).all()
    assert valid.tolist() == [True] + [False] * 9 + [True]
    np.testing.assert_allclose(actions[[0, 10]], tokenizer.decode([good[0], good[2]], 10, 7), atol=1e-12)
  zeros = tokenizer.decode(batch, horizon=10, action_dim=7, on_malformed="zeros")
  assert not zeros[1:10].any()
  padded = tokenizer.decode(batch, horizon=10, action_dim=7)
  # Too long: truncated to the first H·D coefficients, which here are exactly good[1]'s.
  np.testing.assert_allclose(padded[2], tokenizer.decode([good[1]], 10, 7)[0], atol=1e-12)
  # Dropping bad ids leaves the good ones: the same chunk as without them.
  for row in (4, 5, 7):
    np.testing.assert_allclose(padded[row], padded[0], atol=1e-12)
  assert not padded[[1, 6, 9]].any()  # nothing decodable: all-zero coefficients


def test_short_sequences_are_zero_padded_coefficients(fitted):
  tokenizer, _, held_out = fitted
  ids = tokenizer.encode(held_out[:1])[0]
  full = np.rint(dct.dct_numpy(tokenizer.decode([ids], 10, 7)[0]) * 10).reshape(-1)
  # Keep a prefix of ids that ends on a whole character, count the coefficients it spells,
  # and check the rest are zero.
  prefix = next(ids[:n] for n in range(len(ids) // 2, 0, -1) if "\ufffd" not in tokenizer.bpe.decode(ids[:n]))
  (actions,), (valid,) = tokenizer.decode([prefix], 10, 7, return_valid=True)
  coeffs = np.rint(dct.dct_numpy(actions) * 10).reshape(-1)
  count = len(tokenizer.bpe.decode(prefix))
  assert 0 < count < 70 and not valid
  np.testing.assert_array_equal(coeffs[:count], full[:count])
  assert not coeffs[count:].any()


def test_raise_mode_names_the_sequence(fitted):
  tokenizer, _, held_out = fitted
  good = tokenizer.encode(held_out[:2])
  with pytest.raises(ValueError, match=r"sequence 1 are malformed: 0 coefficients, expected 70"):
    tokenizer.decode([good[0], []], horizon=10, action_dim=7, on_malformed="raise")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tokenizer.decode([[-3]], horizon=10, action_dim=7, on_malformed="raise")


def test_random_ids_decode_like_the_tokenizers_library(fitted):
  """The byte table + UTF-8 decoding agree with `Tokenizer.decode` wherever that is lossless."""
  tokenizer, _, _ = fitted
  rng = np.random.default_rng(3)
  rows = [rng.integers(0, tokenizer.bpe.get_vocab_size(), rng.integers(0, 30)).tolist() for _ in range(400)]
  # With H = 1 the DCT is the identity, so the actions are the coefficients / scale; a wide D
  # keeps every row's coefficients (none truncated).
  size = 4000
  actions, valid = tokenizer.decode(rows, horizon=1, action_dim=size, return_valid=True)
  coeffs = np.rint(actions[:, 0, :] * tokenizer.scale)
  lossless = 0
  for row, coeff, ok in zip(rows, coeffs, valid):
    text = tokenizer.bpe.decode(row)
    if "\ufffd" in text:
      assert not ok
      continue
    lossless += 1
    expected = np.array([ord(c) for c in text], dtype=np.int64) + tokenizer.min_token
    np.testing.assert_array_equal(coeff[:len(expected)], expected)
    assert not coeff[len(expected):].any()
  assert 50 < lossless < 400  # both kinds were exercised


def test_a_tokenizer_with_another_decoder_still_decodes():
  bpe = Tokenizer(models.BPE(vocab={chr(i): i for i in range(128)} | {"AA": 128}, merges=[("A", "A")]))
  bpe.decoder = decoders.Fuse()
  tokenizer = FASTTokenizer(bpe, scale=10.0, min_token=-65, vocab_size=129)
  chunks = np.zeros((2, 2, 2))
  chunks[1, 0, 0] = 0.1 * np.sqrt(2)
  ids = tokenizer.encode(chunks)
  assert ids[0] == [128, 128]
  np.testing.assert_allclose(tokenizer.decode(ids + [[500]], horizon=2, action_dim=2),
                             np.concatenate([chunks, np.zeros((1, 2, 2))]), atol=1e-12)


# ---------------------------------------------------------------------- bad input


def test_decode_without_the_chunk_shape_is_an_error(fitted):
  tokenizer, _, held_out = fitted
  ids = tokenizer.encode(held_out[:2])  # encoding first leaves nothing behind to fall back on
  with pytest.raises(ValueError, match="needs horizon= and action_dim="):
    tokenizer.decode(ids)
  with pytest.raises(ValueError, match="needs horizon= and action_dim="):
    tokenizer.decode(ids, horizon=10)
  with pytest.raises(ValueError, match="action_dim must be a positive int"):
    tokenizer.decode(ids, horizon=10, action_dim=0)
  with pytest.raises(ValueError, match="on_malformed"):
    tokenizer.decode(ids, horizon=10, action_dim=7, on_malformed="ignore")
  assert tokenizer.decode([], horizon=10, action_dim=7).shape == (0, 10, 7)
  assert tokenizer.encode(np.zeros((0, 10, 7))) == []


def test_bad_chunks_and_fit_arguments_are_clear_errors(fitted):
  tokenizer, train, _ = fitted
  with pytest.raises(ValueError, match="NaN or infinite"):
    tokenizer.encode(np.full((1, 10, 7), np.nan))
  with pytest.raises(ValueError, match=r"shape \[N, H, D\]"):
    tokenizer.encode(np.zeros((2, 3, 4, 5)))
  with pytest.raises(ValueError, match="real float array"):
    tokenizer.encode(np.array([["a"]]))
  with pytest.raises(ValueError, match="are the chunks normalised"):
    tokenizer.encode(np.full((1, 10, 7), 1e6))
  with pytest.raises(ValueError, match="vocab_size 100 is too small"):
    FASTTokenizer.fit(train * 10, vocab_size=100)
  with pytest.raises(ValueError, match="scale must be a positive"):
    FASTTokenizer.fit(train, scale=0)
  # A single [H, D] chunk is one chunk, as in the reference.
  assert tokenizer.encode(train[0]) == tokenizer.encode(train[:1])


# ---------------------------------------------------------------------- the fit CLI


def test_fit_cli_writes_a_loadable_tokenizer_and_reports_compression(tmp_path):
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  chunks = action_chunks(np.random.default_rng(4), 400, 16)
  np.save(tmp_path / "chunks.npy", chunks)
  run = subprocess.run([sys.executable, os.path.join(repo, "launch", "fit_fast.py"), f"--chunks={tmp_path / 'chunks.npy'}",
                        f"--out={tmp_path / 'fast'}", "--vocab_size=512"], capture_output=True, text=True, cwd=repo)
  assert run.returncode == 0, run.stderr
  stats = {key.strip(): value for key, value in (
      line.split(":", 1) for line in run.stdout.splitlines() if ":" in line and not line.startswith("wrote"))}
  tokenizer = FASTTokenizer.load(tmp_path / "fast")
  ids = tokenizer.encode(chunks)
  assert float(stats["mean_tokens_per_chunk"]) == pytest.approx(np.mean([len(r) for r in ids]), rel=1e-3)
  assert float(stats["compression_ratio"]) == pytest.approx(16 * 7 / np.mean([len(r) for r in ids]), rel=1e-3)
  assert int(stats["vocab_size"]) == tokenizer.bpe.get_vocab_size() <= 512

  np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  run = subprocess.run([sys.executable, os.path.join(repo, "launch", "fit_fast.py"),
                        f"--chunks={tmp_path / 'objects.npy'}", f"--out={tmp_path / 'x'}"],
                       capture_output=True, text=True, cwd=repo)
  assert run.returncode != 0 and "not a plain numeric .npy array" in run.stderr
