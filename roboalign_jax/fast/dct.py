"""Orthonormal DCT-II and its inverse along the time axis of action chunks, as matrix products.

For chunk lengths of a few dozen steps a [H, H] matrix product is as fast as an FFT and runs
unchanged under `jax.jit`, on any backend, batched over leading axes. The matrix is
orthonormal (SciPy's `norm="ortho"`), so the inverse is its transpose:

  C[k, t] = s_k · cos(π k (2t + 1) / (2H)),  s_0 = √(1/H),  s_k = √(2/H) for k > 0
  dct(x) = C @ x,   idct(X) = Cᵀ @ X

`dct`/`idct` are the JAX versions (dtype follows the input: float32 by default, float64
under `jax.enable_x64`); `dct_numpy`/`idct_numpy` are the float64 host versions the FAST
tokenizer quantises with, so its rounding matches the reference's SciPy float64 DCT.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def dct_matrix(length: int) -> np.ndarray:
  """The orthonormal DCT-II matrix C, float64 [length, length] (read-only; row k = frequency k)."""
  if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
    raise ValueError(f"DCT length must be a positive integer, got {length!r}")
  k = np.arange(length)[:, None]
  t = np.arange(length)[None, :]
  matrix = np.cos(np.pi * k * (2 * t + 1) / (2 * length)) * np.sqrt(2.0 / length)
  matrix[0] = np.sqrt(1.0 / length)
  matrix.flags.writeable = False
  return matrix


def dct_numpy(x, axis: int = -2) -> np.ndarray:
  """Orthonormal DCT-II of `x` along `axis` (time), float64; x: [..., H, D] -> [..., H, D] by default."""
  x = np.asarray(x, dtype=np.float64)
  return _apply_numpy(dct_matrix(_axis_length(x.shape, axis)), x, axis)


def idct_numpy(coeffs, axis: int = -2) -> np.ndarray:
  """Inverse of `dct_numpy` (orthonormal DCT-III) along `axis`, float64; same shape as `coeffs`."""
  coeffs = np.asarray(coeffs, dtype=np.float64)
  return _apply_numpy(dct_matrix(_axis_length(coeffs.shape, axis)).T, coeffs, axis)


def dct(x: jax.Array, axis: int = -2) -> jax.Array:
  """Orthonormal DCT-II along `axis` (time) in JAX; x: [..., H, D] -> [..., H, D]. Jit-able."""
  x = _as_float(x)
  return _apply_jax(dct_matrix(_axis_length(x.shape, axis)), x, axis)


def idct(coeffs: jax.Array, axis: int = -2) -> jax.Array:
  """Inverse of `dct` (orthonormal DCT-III) along `axis` in JAX; same shape as `coeffs`. Jit-able."""
  coeffs = _as_float(coeffs)
  return _apply_jax(dct_matrix(_axis_length(coeffs.shape, axis)).T, coeffs, axis)


def _axis_length(shape: tuple[int, ...], axis: int) -> int:
  if not -len(shape) <= axis < len(shape):
    raise ValueError(f"axis {axis} is out of range for an array of shape {shape}")
  return shape[axis]


def _apply_numpy(matrix: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
  if x.ndim == 1:
    return matrix @ x
  # Stacked matmul reads the batch in place; tensordot would first copy it into [H, rest].
  return np.moveaxis(np.matmul(matrix, np.moveaxis(x, axis, -2)), -2, axis)


def _as_float(x) -> jax.Array:
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _apply_jax(matrix: np.ndarray, x: jax.Array, axis: int) -> jax.Array:
  # HIGHEST: on TPU/GPU the default matmul precision rounds inputs to bf16/tf32, which would
  # move quantised coefficients across rounding boundaries.
  matrix = jnp.asarray(matrix, dtype=x.dtype)
  moved = jnp.moveaxis(x, axis, -2) if x.ndim > 1 else x[:, None]
  out = jnp.matmul(matrix, moved, precision=jax.lax.Precision.HIGHEST)
  return jnp.moveaxis(out, -2, axis) if x.ndim > 1 else out[:, 0]
