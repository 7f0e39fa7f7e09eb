"""FASTTokenizer: action chunks <-> FAST token ids, compatible with the public FAST release.

Encode (as `physical-intelligence/fast`'s processor does it): orthonormal DCT-II along time,
× scale, round half to even, flatten row-major `[H, D]` (every dimension's frequency 0 first),
− min_token, clip at 0, one character per integer (`chr`), byte-level BPE. Decode inverts it.

Differences from the reference, all deliberate:
  * whole batches at once: one matrix-product DCT and one `encode_batch` call to encode; a
    vectorised decode (a token -> bytes table gathered in NumPy, UTF-8 decoded many sequences
    per codec call, one inverse-DCT product);
  * decode needs `horizon` and `action_dim` every call; nothing is remembered from encode;
  * decode never raises on malformed ids (unless asked to) and can return a validity mask.
"""

from __future__ import annotations

import bisect
import codecs
import dataclasses
import itertools
import json
import logging
import math
import os
from typing import Any, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from roboalign_jax.fast import dct

PROCESSOR_CONFIG = "processor_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# What the public release's `AutoProcessor` entry points at; kept so a saved directory has the
# public layout (the public `processing_action_tokenizer.py` itself is not shipped here).
_AUTO_MAP = {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"}
_PROCESSOR_CLASS = "UniversalActionProcessor"
_MALFORMED_MODES = ("pad", "zeros", "raise")
# Characters must be encodable as UTF-8 for the BPE; surrogates start here.
_MAX_CHAR = 0xD7FF


class FASTTokenizer:
  """DCT + scale/round + BPE codec for action chunks float [N, H, D] <-> FAST ids list[list[int]].

  Attributes:
    bpe: the byte-level BPE `tokenizers.Tokenizer` (the release's `tokenizer.json`).
    scale: DCT coefficients are multiplied by this before rounding.
    min_token: the smallest quantised coefficient seen in fitting; subtracted before `chr`.
    vocab_size: the vocabulary size the BPE was trained for (the config's value).
  """

  def __init__(self, bpe: Tokenizer, *, scale: float, min_token: int, vocab_size: int):
    if not isinstance(bpe, Tokenizer):
      raise TypeError(f"bpe must be a tokenizers.Tokenizer, got {type(bpe).__name__}")
    _check_scale(scale)
    for name, value in (("min_token", min_token), ("vocab_size", vocab_size)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if vocab_size < 1:
      raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    self.bpe = bpe
    self.scale = scale
    self.min_token = int(min_token)
    self.vocab_size = int(vocab_size)
    self._bytes_table = _ByteTable.build(bpe)

  # ------------------------------------------------------------------ fit

  @classmethod
  def fit(cls, chunks, vocab_size: int = 2048, scale: float = 10.0) -> "FASTTokenizer":
    """Trains the BPE on action chunks exactly as the public release's `fit` does.

    chunks: float [N, H, D], or a sequence of float [H_i, D_i] arrays (shapes may differ, as
      for the universal tokenizer). Normalise them first (q01/q99 -> [-1, 1]).
    The quantised coefficients' range [min, max] must fit in `vocab_size`: it becomes the BPE's
    initial alphabet, one character per integer.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
      raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    _check_scale(scale)
    quantised = [q.reshape(len(q), -1) for q in _quantise_groups(chunks, scale, "chunks")]
    low, high = min(q.min() for q in quantised), max(q.max() for q in quantised)
    if high - low > vocab_size:
      raise ValueError(
          f"vocab_size {vocab_size} is too small for the quantised coefficient range [{low:.0f}, {high:.0f}] "
          f"({high - low + 1:.0f} values at scale {scale}); raise vocab_size or lower scale")
    min_token, max_token = int(low), int(high)
    alphabet_size = max_token - min_token + 1
    if alphabet_size - 1 > _MAX_CHAR:
      raise ValueError(f"quantised coefficient range [{min_token}, {max_token}] is too wide to map to characters")
    quantised = [q.astype(np.int64) for q in quantised]
    if alphabet_size + 99 > vocab_size:
      logging.warning("FAST fit: the alphabet (%d values) nearly fills vocab_size %d; few merges will be learned",
                      alphabet_size, vocab_size)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        # Every integer in range is a character of the alphabet, seen in the data or not.
        initial_alphabet=[chr(i) for i in range(alphabet_size)],
        max_token_length=10000,
    )
    texts = itertools.chain.from_iterable(_to_strings(q - min_token) for q in quantised)
    bpe.train_from_iterator(texts, trainer=trainer)
    return cls(bpe, scale=scale, min_token=min_token, vocab_size=vocab_size)

  # ------------------------------------------------------------------ encode

  def quantise(self, chunks) -> np.ndarray:
    """The integers the BPE sees: int64 [N, H·D] = max(round(dct(chunks)·scale) − min_token, 0).

    chunks: float [N, H, D] or [H, D] (treated as one chunk).
    """
    chunks = _as_chunks(chunks, "chunks")
    num, horizon, action_dim = chunks.shape
    quantised = _quantise(chunks, self.scale).reshape(num, horizon * action_dim) - self.min_token
    too_big = quantised > _MAX_CHAR
    if too_big.any():
      row = int(np.argwhere(too_big)[0, 0])
      raise ValueError(
          f"chunk {row} has a DCT coefficient of {(quantised[too_big].max() + self.min_token) / self.scale:.4g}, "
          "far outside what a FAST tokenizer can encode; are the chunks normalised?")
    return np.maximum(quantised, 0).astype(np.int64)

  def encode(self, chunks) -> list[list[int]]:
    """Action chunks float [N, H, D] (or one chunk [H, D]) -> N lists of FAST ids (lengths vary).

    Identical ids to the public release's processor for the same tokenizer files. As there,
    coefficients below `min_token` are clipped to it (silently: such a chunk decodes to a
    different one), and bytes the BPE has never seen are dropped (decode then flags the
    sequence as malformed: it is short of coefficients).
    """
    texts = _to_strings(self.quantise(chunks))
    return [encoding.ids for encoding in self.bpe.encode_batch_fast(texts)]

  # ------------------------------------------------------------------ decode

  def decode(self,
             ids,
             horizon: int | None = None,
             action_dim: int | None = None,
             *,
             on_malformed: str = "pad",
             return_valid: bool = False):
    """FAST ids -> action chunks float64 [N, H, D]; with return_valid, also bool [N].

    ids: N sequences of FAST ids (lists, arrays; lengths may differ) or an int array [N, T].
    horizon, action_dim: H and D of the chunks; required (ids do not carry the shape).
    A sequence is malformed when it holds an id outside the vocabulary (or a non-integer),
    its bytes are not valid UTF-8, or it decodes to other than H·D coefficients.
    on_malformed:
      "pad"   (default) drop bad ids and characters, then truncate or zero-pad the
              coefficients to H·D; never raises on malformed ids.
      "zeros" the reference's behaviour: a malformed sequence decodes to all zeros.
      "raise" ValueError naming the first malformed sequence and why.
    valid[i] is False exactly when sequence i is malformed.
    """
    if horizon is None or action_dim is None:
      raise ValueError(
          "FASTTokenizer.decode needs horizon= and action_dim=: FAST ids do not record the chunk shape "
          f"(got horizon={horizon}, action_dim={action_dim})")
    for name, value in (("horizon", horizon), ("action_dim", action_dim)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if on_malformed not in _MALFORMED_MODES:
      raise ValueError(f"on_malformed must be one of {_MALFORMED_MODES}, got {on_malformed!r}")
    flat, lengths, problems = _flatten_ids(ids)
    if len(lengths) == 0:
      actions = np.zeros((0, horizon, action_dim))
      return (actions, np.zeros(0, dtype=bool)) if return_valid else actions
    coeffs, valid, problems = self._decode_coefficients(flat, lengths, problems, horizon * action_dim)
    if not valid.all():
      if on_malformed == "raise":
        row = int(np.flatnonzero(~valid)[0])
        raise ValueError(f"FAST ids of sequence {row} are malformed: {problems[row]} "
                         f"({int((~valid).sum())} of {len(valid)} sequences malformed)")
      if on_malformed == "zeros":
        coeffs[~valid] = 0
    # idct(coeffs / scale), with the 1/scale folded into the [H, H] matrix.
    inverse = dct.dct_matrix(horizon).T / self.scale
    actions = np.matmul(inverse, coeffs.reshape(-1, horizon, action_dim).astype(np.float64))
    return (actions, valid) if return_valid else actions

  def _decode_coefficients(self, flat: np.ndarray, lengths: np.ndarray, problems: dict[int, str],
                           size: int) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Token ids -> int coefficients [N, size] (truncated / zero-padded), valid bool [N]."""
    num_rows = len(lengths)
    row_of_id = np.repeat(np.arange(num_rows), lengths)
    known = self._bytes_table.known(flat)
    bad_rows, first = np.unique(row_of_id[~known], return_index=True)
    for row, bad_id in zip(bad_rows.tolist(), flat[~known][first].tolist()):
      problems.setdefault(row, f"id {bad_id} is outside the vocabulary (ids 0..{len(self._bytes_table.known_ids) - 1})")
    flat, row_of_id = flat[known], row_of_id[known]
    if self._bytes_table.byte_level:
      data, byte_lengths = self._bytes_table.gather(flat, row_of_id, num_rows)
      chars, counts, bad_utf8 = _utf8_decode_rows(data, byte_lengths)
    else:
      chars, counts, bad_utf8 = self._decode_generic(flat, row_of_id, num_rows)
    for row in bad_utf8:
      problems.setdefault(row, "token bytes are not valid UTF-8")

    min_token = np.int32(self.min_token)
    if (counts == size).all():
      coeffs = chars.reshape(num_rows, size) + min_token
    else:
      char_starts = np.cumsum(counts) - counts
      fits = counts == size
      coeffs = np.zeros((num_rows, size), dtype=np.int32)
      coeffs[fits] = chars[char_starts[fits, None] + np.arange(size)] + min_token
      for row in np.flatnonzero(~fits).tolist():
        problems.setdefault(row, f"{counts[row]} coefficients, expected {size}")
        # Truncated past H·D, zero-padded short of it.
        kept = min(int(counts[row]), size)
        coeffs[row, :kept] = chars[char_starts[row]:char_starts[row] + kept] + min_token
    valid = np.ones(num_rows, dtype=bool)
    valid[list(problems)] = False
    return coeffs, valid, problems

  def _decode_generic(self, flat, row_of_id, num_rows):
    """Tokenizers with another decoder than ByteLevel: the library decodes each sequence."""
    bounds = np.searchsorted(row_of_id, np.arange(num_rows + 1))
    texts = self.bpe.decode_batch([flat[bounds[r]:bounds[r + 1]].tolist() for r in range(num_rows)],
                                  skip_special_tokens=False)
    bad_rows = [r for r, text in enumerate(texts) if "\ufffd" in text]
    arrays = [_text_to_ints(text.replace("\ufffd", "")) for text in texts]
    counts = np.array([len(a) for a in arrays], dtype=np.int64)
    return np.concatenate(arrays), counts, bad_rows

  # ------------------------------------------------------------------ save / load

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the public release's layout: processor_config.json, tokenizer.json,
    tokenizer_config.json, special_tokens_map.json."""
    os.makedirs(directory, exist_ok=True)
    scale = int(self.scale) if float(self.scale).is_integer() else float(self.scale)
    config = {
        "action_dim": None,
        "auto_map": _AUTO_MAP,
        "min_token": self.min_token,
        "processor_class": _PROCESSOR_CLASS,
        "scale": scale,
        "time_horizon": None,
        "vocab_size": self.vocab_size,
    }
    tokenizer_config = {
        "added_tokens_decoder": {},
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    _write_json(os.path.join(directory, PROCESSOR_CONFIG), config)
    _write_json(os.path.join(directory, TOKENIZER_CONFIG), tokenizer_config)
    _write_json(os.path.join(directory, SPECIAL_TOKENS_MAP), {})
    self.bpe.save(os.path.join(directory, TOKENIZER_FILE))

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "FASTTokenizer":
    """Loads a directory in the public release's layout (e.g. a copy of `physical-intelligence/fast`).

    Needs processor_config.json (`scale`, `vocab_size`, `min_token`) and tokenizer.json (at the
    top level or, as newer transformers save processors, in `bpe_tokenizer/`). The config's
    `time_horizon`/`action_dim` are not used: decode takes them explicitly.
    """
    directory = os.fspath(directory)
    config_path = os.path.join(directory, PROCESSOR_CONFIG)
    if not os.path.isfile(config_path):
      raise FileNotFoundError(f"not a FAST tokenizer directory: {config_path} is missing")
    config = _read_json(config_path)
    missing = [key for key in ("scale", "vocab_size", "min_token") if key not in config]
    if missing:
      raise ValueError(f"{config_path} lacks {missing}; expected scale, vocab_size and min_token")
    candidates = [os.path.join(directory, TOKENIZER_FILE), os.path.join(directory, "bpe_tokenizer", TOKENIZER_FILE)]
    tokenizer_path = next((p for p in candidates if os.path.isfile(p)), None)
    if tokenizer_path is None:
      raise FileNotFoundError(f"no {TOKENIZER_FILE} in {directory} (looked at {candidates})")
    try:
      bpe = Tokenizer.from_file(tokenizer_path)
    except Exception as error:  # the Rust side raises a bare Exception on parse errors
      raise ValueError(f"{tokenizer_path} is not a valid tokenizers file: {error}") from error
    try:
      return cls(bpe, scale=config["scale"], min_token=config["min_token"], vocab_size=config["vocab_size"])
    except (TypeError, ValueError) as error:
      raise ValueError(f"{config_path}: {error}") from error

  def __repr__(self) -> str:
    return (f"FASTTokenizer(scale={self.scale}, min_token={self.min_token}, vocab_size={self.vocab_size}, "
            f"bpe ids={self.bpe.get_vocab_size()})")


# ---------------------------------------------------------------------- the token -> bytes table


@dataclasses.dataclass(frozen=True)
class _ByteTable:
  """Each id's bytes under the ByteLevel decoder, as one flat array plus offsets.

  The ByteLevel decoder maps each character of a token through the GPT-2 byte alphabet, or
  takes the token's own UTF-8 bytes when some character is outside it, then decodes the
  concatenated bytes as UTF-8. Both steps are per token, so a table + gather reproduces it.
  """
  known_ids: np.ndarray  # bool [num_ids]
  offsets: np.ndarray  # int64 [num_ids + 1]
  data: np.ndarray  # uint8 [total bytes]
  byte_level: bool

  @classmethod
  def build(cls, bpe: Tokenizer) -> "_ByteTable":
    vocab = bpe.get_vocab(with_added_tokens=True)
    num_ids = max(vocab.values(), default=-1) + 1
    known = np.zeros(num_ids, dtype=bool)
    pieces = [b""] * num_ids
    char_to_byte = _byte_level_alphabet()
    for token, index in vocab.items():
      known[index] = True
      try:
        pieces[index] = bytes(char_to_byte[c] for c in token)
      except KeyError:
        pieces[index] = token.encode("utf-8")
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=num_ids)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    return cls(known, offsets, data, isinstance(bpe.decoder, decoders.ByteLevel))

  def known(self, ids: np.ndarray) -> np.ndarray:
    """bool mask of ids that exist in the vocabulary; ids: int64 [M]."""
    inside = (ids >= 0) & (ids < len(self.known_ids))
    inside[inside] = self.known_ids[ids[inside]]
    return inside

  def gather(self, ids: np.ndarray, row_of_id: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated bytes of `ids` (known, grouped by row) -> (uint8 [B], bytes per row int64 [num_rows])."""
    starts = self.offsets[ids]
    lengths = self.offsets[ids + 1] - starts
    out_starts = np.cumsum(lengths) - lengths
    total = int(out_starts[-1] + lengths[-1]) if len(ids) else 0
    # Output byte j of token i comes from data[starts[i] + (j - out_starts[i])].
    index = np.arange(total, dtype=np.int64)
    index += np.repeat(starts - out_starts, lengths)
    return self.data[index], np.bincount(row_of_id, weights=lengths, minlength=num_rows).astype(np.int64)


def _byte_level_alphabet() -> dict[str, int]:
  """GPT-2's byte <-> printable character map (character -> byte) used by ByteLevel BPE."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  mapping = {chr(b): b for b in printable}
  mapping.update({chr(256 + n): b for n, b in enumerate(others)})
  return mapping


# ---------------------------------------------------------------------- UTF-8 per sequence

_UTF8_LENGTH = np.zeros(256, dtype=np.int64)  # sequence length by lead byte; 0 = not a lead
_UTF8_LENGTH[:0x80] = 1
_UTF8_LENGTH[0xC2:0xE0] = 2
_UTF8_LENGTH[0xE0:0xF0] = 3
_UTF8_LENGTH[0xF0:0xF5] = 4


def _utf8_decode_rows(data: np.ndarray, row_lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
  """Decodes each row's bytes as UTF-8, like the ByteLevel decoder (`from_utf8_lossy`).

  data: uint8 [B], rows back to back; row_lengths: int64 [R].
  Returns code points int32 [C] (rows back to back), characters per row int64 [R], and the
  rows that are not valid UTF-8 (their invalid bytes are dropped rather than replaced).

  Valid rows are decoded many at a time by Python's C codec. That is only sound for rows that
  start on a character and end with a complete one (so no character spans two rows); rows
  failing that, and rows the codec rejects, are decoded one by one.
  """
  num_rows = len(row_lengths)
  ends = np.cumsum(row_lengths)
  starts = ends - row_lengths
  is_lead = (data & 0xC0) != 0x80
  counts = np.zeros(num_rows, dtype=np.int64)  # characters, for a valid row: its lead bytes
  rows = np.flatnonzero(row_lengths)
  self_contained = row_lengths == 0
  if rows.size:
    counts[rows] = np.add.reduceat(is_lead, starts[rows], dtype=np.int64)
    # The last lead byte among a row's last 4 bytes must start a sequence reaching the row end.
    last = ends[rows] - 1
    for back in (1, 2, 3):
      candidate = ends[rows] - 1 - back
      move = ~is_lead[last] & (candidate >= starts[rows])
      last = np.where(move, candidate, last)
    self_contained[rows] = (is_lead[starts[rows]] & is_lead[last] &
                            (_UTF8_LENGTH[data[last]] == ends[rows] - last))
  bad = np.flatnonzero(~self_contained).tolist()
  buffer = memoryview(np.ascontiguousarray(data))
  pieces, row = [], 0
  while row < num_rows:
    next_bad = bad[bisect.bisect_left(bad, row)] if bad and bad[-1] >= row else num_rows
    if next_bad == row:
      text = codecs.utf_8_decode(buffer[starts[row]:ends[row]], "replace", True)[0].replace("\ufffd", "")
      pieces.append(_text_to_ints(text))
      counts[row] = len(pieces[-1])
      row += 1
      continue
    try:
      pieces.append(_text_to_ints(codecs.utf_8_decode(buffer[starts[row]:ends[next_bad - 1]], "strict", True)[0]))
      row = next_bad
    except UnicodeDecodeError as error:
      bisect.insort(bad, int(np.searchsorted(ends, starts[row] + error.start, side="right")))
  return (np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)), counts, bad


# ---------------------------------------------------------------------- helpers


def _check_scale(scale) -> None:
  if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) or not (
      math.isfinite(scale) and scale > 0):
    raise ValueError(f"scale must be a positive finite number, got {scale!r}")


def _as_chunks(chunks, name: str) -> np.ndarray:
  """Validates action chunks -> float64 [N, H, D] ([H, D] becomes one chunk, as in the reference)."""
  try:
    array = np.asarray(chunks)
  except (ValueError, TypeError) as error:
    raise ValueError(f"{name} must be a float array [N, H, D]: {error}") from error
  if array.dtype.kind not in "fiu" or array.dtype == bool:
    raise ValueError(f"{name} must be a real float array [N, H, D], got dtype {array.dtype}")
  if array.ndim == 2:
    array = array[None]
  if array.ndim != 3 or 0 in array.shape[1:]:
    raise ValueError(f"{name} must have shape [N, H, D] (or [H, D]) with H, D > 0, got {np.shape(chunks)}")
  array = array.astype(np.float64, copy=False)
  if not np.isfinite(array).all():
    raise ValueError(f"{name} contain NaN or infinite values (chunk {int(np.argwhere(~np.isfinite(array))[0, 0])})")
  return array


def _quantise(chunks: np.ndarray, scale) -> np.ndarray:
  """float64 [N, H, D] -> [N, H, D] = round_half_even(dct(chunks) · scale), still float64 so that
  range checks see huge values before an integer cast would wrap them."""
  return np.rint(dct.dct_numpy(chunks, axis=-2) * scale)


def _quantise_groups(chunks, scale, name: str) -> list[np.ndarray]:
  """Quantised [N_g, H_g, D_g] blocks for fitting, one per distinct chunk shape, in input order."""
  if isinstance(chunks, np.ndarray) or not isinstance(chunks, Sequence):
    array = _as_chunks(chunks, name)
    if np.ndim(chunks) != 3 or len(array) == 0:
      raise ValueError(f"{name} must be a non-empty array [N, H, D], got shape {np.shape(chunks)}")
    return [_quantise(array, scale)]
  if not chunks:
    raise ValueError(f"{name} is empty; fitting needs at least one chunk")
  if any(np.ndim(c) != 2 for c in chunks):
    raise ValueError(f"{name} must be an array [N, H, D] or a sequence of [H, D] arrays")
  arrays = [_as_chunks(c, f"{name}[{i}]")[0] for i, c in enumerate(chunks)]
  # Consecutive chunks of one shape go through the DCT together; order is kept for the trainer.
  return [_quantise(np.stack(list(group)), scale) for _, group in itertools.groupby(arrays, key=np.shape)]


def _to_strings(values: np.ndarray) -> list[str]:
  """int [N, L] in [0, 0xD7FF] -> N strings of L characters, `chr` of each value."""
  values = np.ascontiguousarray(values, dtype="<u4")
  length = values.shape[1]
  text = values.tobytes().decode("utf-32-le")
  return [text[i:i + length] for i in range(0, len(text), length)] if length else [""] * len(values)


def _text_to_ints(text: str) -> np.ndarray:
  """Code points of `text`, int32 [len(text)] (code points stay below 2**21)."""
  return np.frombuffer(text.encode("utf-32-le"), dtype="<i4")


def _flatten_ids(ids) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
  """N id sequences -> (int64 [M] ids back to back, int64 [N] lengths, {row: problem}).

  Entries that are not integers are dropped and their row recorded as malformed.
  """
  if hasattr(ids, "ndim") and hasattr(ids, "dtype"):
    array = np.asarray(ids)
    if array.ndim != 2:
      raise ValueError(f"an id array must be 2-D [N, T], got shape {array.shape}")
    if array.dtype.kind in "iu":
      return _clip_ids(array.reshape(-1)), np.full(len(array), array.shape[1], dtype=np.int64), {}
    ids = array.tolist()
  if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
    raise TypeError(f"ids must be a sequence of id sequences or a 2-D int array, got {type(ids).__name__}")
  if ids and all(hasattr(row, "dtype") for row in ids):  # numpy / jax rows
    arrays = [np.asarray(row) for row in ids]
    if all(a.ndim == 1 and (a.dtype.kind in "iu" or a.size == 0) for a in arrays):
      lengths = np.array([a.size for a in arrays], dtype=np.int64)
      return np.concatenate([_clip_ids(a) for a in arrays]), lengths, {}
  elif not any(isinstance(row, (str, bytes)) for row in ids):  # lists of Python ints
    try:
      lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
      flat = np.asarray(list(itertools.chain.from_iterable(ids)))
      if flat.ndim == 1 and (flat.dtype.kind in "iu" or flat.size == 0):
        return _clip_ids(flat), lengths, {}
    except (TypeError, ValueError, OverflowError):
      pass
  rows, problems = [], {}
  for index, row in enumerate(ids):
    if (isinstance(row, (str, bytes)) or not _is_iterable(row) or (hasattr(row, "dtype") and np.ndim(row) != 1)):
      rows.append([])
      shape = f" of shape {np.shape(row)}" if hasattr(row, "dtype") else ""
      problems[index] = f"not a sequence of ids: {type(row).__name__}{shape}"
      continue
    row = np.asarray(row).tolist() if hasattr(row, "dtype") else list(row)
    kept = [int(x) for x in row if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))]
    if len(kept) != len(row):
      problems[index] = "non-integer ids"
    # Negative and huge ids become -1 / int64 max: out of vocabulary, without overflow.
    rows.append([min(max(x, -1), np.iinfo(np.int64).max) for x in kept])
  lengths = np.array([len(r) for r in rows], dtype=np.int64)
  flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
  return flat, lengths, problems


def _clip_ids(flat: np.ndarray) -> np.ndarray:
  """Any integer dtype -> int64 without wrap-around (huge unsigned ids stay out of vocabulary)."""
  if flat.dtype == np.uint64:
    flat = np.minimum(flat, np.iinfo(np.int64).max)
  return flat.astype(np.int64)


def _is_iterable(value) -> bool:
  try:
    iter(value)
  except TypeError:
    return False
  return True


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} is not valid JSON: {error}") from error
  if not isinstance(value, dict):
    raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
  return value


def _write_json(path: str, value: dict[str, Any]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write("\n")
