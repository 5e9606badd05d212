"""The explicit-vector CSR row loops (kernels/_simd.py) against NumPy.

They take every output count (one to four 256-bit vectors per nonzero, the
last one masked and 128-bit when it holds few columns; several chunks of four), both float dtypes, int32 and int64 indices, with and without an
intercept, and fall back to the plain loop for layouts they cannot vector-load
(a non-contiguous W or z).  A masked load must never touch the columns past
k: the tests check that the neighbours of every written row stay as they were.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from optkern.kernels._simd import csr_row_scatter, csr_row_scores


# not cached: Numba's cache of a test file's functions keys on this file only,
# and would keep running the loops of an older kernels/_simd.py
@njit
def _all_scores(data, indices, indptr, W, b, Z):
    for i in range(Z.shape[0]):
        csr_row_scores(data, indices, indptr[i], indptr[i + 1], W, b, Z[i])


@njit
def _all_scatter(data, indices, indptr, D, acc):
    for i in range(D.shape[0]):
        csr_row_scatter(data, indices, indptr[i], indptr[i + 1], D[i], acc)


def _problem(seed, n, d, k, dtype, density, index_dtype):
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", dtype=dtype, random_state=seed)
    X.data[:] = rng.standard_normal(X.nnz)
    X.indices = X.indices.astype(index_dtype)
    X.indptr = X.indptr.astype(index_dtype)
    W = rng.standard_normal((d, k)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    D = rng.standard_normal((n, k)).astype(dtype)
    return X, W, b, D


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40), d=st.integers(1, 60),
       k=st.integers(1, 40), dtype=st.sampled_from([np.float32, np.float64]),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
       index_dtype=st.sampled_from([np.int32, np.int64]), intercept=st.booleans())
def test_scores_and_scatter_match_numpy(seed, n, d, k, dtype, density, index_dtype, intercept):
    X, W, b, D = _problem(seed, n, d, k, dtype, density, index_dtype)
    b = b if intercept else None
    # the rows live inside a wider buffer: the columns past k must stay untouched
    Zbig = np.full((n, k + 5), 7.0, dtype)
    Z = Zbig[:, :k]
    Zc = np.ascontiguousarray(Z)
    _all_scores(X.data, X.indices, X.indptr, W, b, Zc)
    want = X @ W + (0 if b is None else b)
    np.testing.assert_allclose(Zc, want, **_tol(dtype))
    # a non-contiguous z (a strided view) takes the plain loop, same result
    _all_scores(X.data, X.indices, X.indptr, W, b, Z)
    np.testing.assert_allclose(Z, want, **_tol(dtype))
    assert np.all(Zbig[:, k:] == 7.0)

    acc0 = np.random.default_rng(seed + 1).standard_normal((d, k)).astype(dtype)
    acc = acc0.copy()
    _all_scatter(X.data, X.indices, X.indptr, D, acc)
    np.testing.assert_allclose(acc, acc0 + X.T @ D, **_tol(dtype))


# every k to 70: each tail variant (1-4 vectors, the last full or half width)
# after 0, 1 and 2 full chunks (32 columns a chunk in float32, 16 in float64)
@pytest.mark.parametrize("k", range(1, 71))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_rows_do_not_spill(k, dtype):
    """Rows of W and acc are k apart: a lane past k would read or write the
    next row.  W's neighbour rows hold NaN (a read would poison the scores),
    acc's last row sits at the end of its buffer."""
    rng = np.random.default_rng(k)
    d = 6
    Wbig = np.full((3 * d, k), np.nan, dtype)
    W = Wbig[d:2 * d]                      # C-contiguous, NaN rows before and after
    W[...] = rng.standard_normal((d, k))
    X = sp.csr_matrix(rng.standard_normal((4, d)).astype(dtype))
    Z = np.empty((4, k), dtype)
    _all_scores(X.data, X.indices, X.indptr, W, None, Z)
    np.testing.assert_allclose(Z, X @ W, **_tol(dtype))

    accbig = np.zeros((3 * d, k), dtype)
    acc = accbig[d:2 * d]
    D = rng.standard_normal((4, k)).astype(dtype)
    _all_scatter(X.data, X.indices, X.indptr, D, acc)
    np.testing.assert_allclose(acc, X.T @ D, **_tol(dtype))
    assert not accbig[:d].any() and not accbig[2 * d:].any()


def test_plain_python_is_the_same_rule():
    """Uncompiled, the two functions are the reference loops."""
    X, W, b, D = _problem(3, 5, 7, 3, np.float64, 0.5, np.int32)
    z = np.empty(3)
    csr_row_scores(X.data, X.indices, X.indptr[2], X.indptr[3], W, b, z)
    np.testing.assert_allclose(z, (X @ W + b)[2])
    acc = np.zeros((7, 3))
    csr_row_scatter(X.data, X.indices, X.indptr[2], X.indptr[3], D[2], acc)
    np.testing.assert_allclose(acc, np.outer(X[2].toarray().ravel(), D[2]))
