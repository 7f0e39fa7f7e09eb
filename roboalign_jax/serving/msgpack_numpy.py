"""openpi's wire format: msgpack with numpy arrays and scalars as tagged maps (bytes keys).

    array  -> {b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": tuple}
    scalar -> {b"__npgeneric__": True, b"data": scalar.item(), b"dtype": dtype.str}

The PyPI `openpi-client` speaks exactly this, so its `WebsocketClientPolicy` talks to our server.
Only plain numeric/bool/byte-string dtypes travel: object arrays would need pickle (never used
here: unpickling a client's bytes runs the client's code), complex and structured (void) dtypes
have no use in a robot observation and openpi refuses them too. Unpacking checks that the
declared shape and dtype account for exactly the bytes sent, so a request cannot make the server
allocate a huge array from a small message; zero-size dtypes ('S0', 'a') and dimensions past
`MAX_DIM` (only an empty array can declare one, e.g. a [0, 2**40, 3] "image", which crashes image
libraries downstream instead of failing validation) are refused too.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

ARRAY_TAG, SCALAR_TAG = b"__ndarray__", b"__npgeneric__"
# dtype kinds that cannot be reconstructed from raw bytes safely (O, V) or are never needed (c).
REFUSED_KINDS = {"O": "object", "V": "structured/void", "c": "complex"}
MAX_DIM = 2 ** 31 - 1  # what image libraries index with a C int; a real array this long exceeds any message


class MessageError(ValueError):
  """A message that is not valid openpi msgpack (bad bytes, refused dtype, inconsistent shape)."""


def _check_dtype(dtype: np.dtype, where: str) -> None:
  if dtype.kind in REFUSED_KINDS:
    raise MessageError(f"{where} has {REFUSED_KINDS[dtype.kind]} dtype {dtype}; expected a numeric, bool or "
                       "fixed-width string dtype")


def _encode(obj: Any) -> Any:
  # msgpack calls this only for objects it cannot pack natively.
  if isinstance(obj, np.ndarray):
    _check_dtype(obj.dtype, f"array of shape {obj.shape}")
    return {ARRAY_TAG: True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
            b"shape": tuple(obj.shape)}
  if isinstance(obj, np.generic):
    _check_dtype(obj.dtype, "numpy scalar")
    return {SCALAR_TAG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
  raise TypeError(f"cannot pack {type(obj).__name__}; expected dicts, lists, str, bytes, numbers, numpy arrays "
                  "or numpy scalars")


def _dtype(value: Any, where: str) -> np.dtype:
  if not isinstance(value, (str, bytes)):
    raise MessageError(f"{where}: dtype is {type(value).__name__}; expected a numpy dtype string such as '<f4'")
  try:
    dtype = np.dtype(value.decode() if isinstance(value, bytes) else value)
  except (TypeError, ValueError, UnicodeDecodeError):
    raise MessageError(f"{where}: unknown dtype {value!r}; expected a numpy dtype string such as '<f4'") from None
  _check_dtype(dtype, where)
  if dtype.itemsize == 0:
    raise MessageError(f"{where}: dtype {value!r} has zero-size items; expected a numpy dtype string such as '<f4'")
  return dtype


def _decode(obj: dict) -> Any:
  if ARRAY_TAG in obj:
    data, shape = obj.get(b"data"), obj.get(b"shape")
    if not isinstance(data, bytes) or not isinstance(shape, (list, tuple)) or b"dtype" not in obj:
      raise MessageError("an __ndarray__ entry needs b'data' (bytes), b'dtype' (str) and b'shape' (list of ints)")
    dtype = _dtype(obj[b"dtype"], "__ndarray__")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
      raise MessageError(f"__ndarray__ shape {list(shape)} must be non-negative integers")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a huge shape cannot overflow
    if expected != len(data):
      raise MessageError(f"__ndarray__ of shape {tuple(shape)} and dtype {dtype} needs {expected} bytes; "
                         f"the message has {len(data)}")
    if any(n > MAX_DIM for n in shape):
      raise MessageError(f"__ndarray__ shape {tuple(shape)} has a dimension over {MAX_DIM}; expected an array that "
                         "fits in a message")
    return np.frombuffer(data, dtype=dtype).reshape(shape)
  if SCALAR_TAG in obj:
    data = obj.get(b"data")
    if not isinstance(data, (bool, int, float, str, bytes)) or b"dtype" not in obj:
      raise MessageError("an __npgeneric__ entry needs b'data' (a number, bool, str or bytes) and b'dtype' (str)")
    dtype = _dtype(obj[b"dtype"], "__npgeneric__")
    try:
      return dtype.type(data)
    except (OverflowError, TypeError, ValueError) as error:
      raise MessageError(f"__npgeneric__ value {data!r} is not a {dtype} ({error})") from None
  return obj


def packb(obj: Any) -> bytes:
  """`obj` (nested dicts/lists of plain values and numpy arrays/scalars) as openpi msgpack bytes."""
  return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
  """The value of openpi msgpack bytes; MessageError when `data` is not a valid message."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise MessageError(f"expected a binary msgpack message; got {type(data).__name__}")
  try:
    return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
  except MessageError:
    raise
  except (msgpack.UnpackException, ValueError, TypeError) as error:
    raise MessageError(f"not a valid msgpack message ({type(error).__name__}: {error})") from None
