"""The matrix-form orthonormal DCT-II / inverse against SciPy's FFT-based `norm="ortho"` transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from roboalign_jax.fast import dct


@pytest.mark.parametrize("horizon", [1, 2, 7, 10, 16, 50])
def test_jax_dct_matches_scipy_in_float64(horizon):
  x = np.random.default_rng(horizon).normal(size=(3, horizon, 7))
  with jax.enable_x64(True):
    coeffs = jax.jit(dct.dct)(jnp.asarray(x))
    back = jax.jit(dct.idct)(coeffs)
    assert coeffs.dtype == jnp.float64
    np.testing.assert_allclose(coeffs, scipy.fft.dct(x, axis=1, norm="ortho"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(dct.idct(jnp.asarray(x)), scipy.fft.idct(x, axis=1, norm="ortho"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("horizon", [1, 10, 16, 50])
def test_numpy_dct_matches_scipy(horizon):
  x = np.random.default_rng(horizon).normal(size=(4, horizon, 7))
  np.testing.assert_allclose(dct.dct_numpy(x), scipy.fft.dct(x, axis=1, norm="ortho"), rtol=0, atol=1e-12)
  np.testing.assert_allclose(dct.idct_numpy(x), scipy.fft.idct(x, axis=1, norm="ortho"), rtol=0, atol=1e-12)
  np.testing.assert_allclose(dct.idct_numpy(dct.dct_numpy(x)), x, rtol=0, atol=1e-12)


def test_axis_argument_and_leading_batch_axes():
  x = np.random.default_rng(0).normal(size=(2, 3, 12, 5))
  for axis in (0, 1, 2, -1):
    expected = scipy.fft.dct(x, axis=axis, norm="ortho")
    np.testing.assert_allclose(dct.dct_numpy(x, axis=axis), expected, atol=1e-12)
    np.testing.assert_allclose(dct.dct(x, axis=axis), expected, atol=1e-4)  # float32 default
  signal = x[0, 0, :, 0]
  np.testing.assert_allclose(dct.dct_numpy(signal, axis=0), scipy.fft.dct(signal, norm="ortho"), atol=1e-12)
  np.testing.assert_allclose(dct.idct(dct.dct(signal, axis=0), axis=0), signal, atol=1e-5)


def test_matrix_is_orthonormal_and_read_only():
  matrix = dct.dct_matrix(16)
  np.testing.assert_allclose(matrix @ matrix.T, np.eye(16), atol=1e-13)
  with pytest.raises(ValueError):
    matrix[0, 0] = 1.0


def test_float32_dtype_is_kept_and_ints_are_promoted():
  assert dct.dct(jnp.ones((4, 3), jnp.float32)).dtype == jnp.float32
  assert jnp.issubdtype(dct.dct(jnp.ones((4, 3), jnp.int32)).dtype, jnp.floating)
  # A constant signal has all its energy at frequency 0: √H · value.
  np.testing.assert_allclose(dct.dct(jnp.full((4, 1), 2.0))[:, 0], [4.0, 0, 0, 0], atol=1e-6)


def test_bad_input_is_a_clear_error():
  with pytest.raises(ValueError, match="axis -2 is out of range"):
    dct.dct_numpy(np.zeros(5))
  with pytest.raises(ValueError, match="positive integer"):
    dct.dct_matrix(0)
