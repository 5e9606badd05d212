"""kernels/_helpers.exp_fast, the exponential the compiled row rules (softmax)
use instead of libm's: its error against NumPy's exp, and IEEE behaviour at
the edges (overflow, subnormal results, infinities, NaN)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from optkern.kernels._helpers import exp_fast


@njit(cache=True)
def _exp_all(a, out):
    for i in range(a.shape[0]):
        out[i] = exp_fast(a[i])


def _ulp_error(dtype, x, compiled=None, exact_fn=np.exp):
    """compiled(x) (exp_fast) vs exact_fn computed in float64 (float32) or
    long double (float64), in units of the result's last place; x restricted
    to normal results."""
    got = np.empty_like(x)
    (compiled or _exp_all)(x, got)
    exact = exact_fn(x.astype(np.float64 if dtype == np.float32 else np.longdouble))
    spacing = np.spacing(exact.astype(dtype)).astype(exact.dtype)
    return np.abs(got.astype(exact.dtype) - exact) / spacing


RANGES = {np.float32: (-87.0, 88.5), np.float64: (-707.0, 709.5)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_fast_is_within_one_and_a_half_ulp(dtype):
    lo, hi = RANGES[dtype]
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(lo, hi, 100_000), rng.uniform(-1, 1, 100_000),
                        np.linspace(lo, hi, 10_001)]).astype(dtype)
    err = _ulp_error(dtype, x)
    assert err.max() <= 1.5, (err.max(), x[np.argmax(err)])
    assert err.mean() < 0.4


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_exp_fast_random_arguments(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    lo, hi = RANGES[dtype]
    xs = data.draw(st.lists(st.floats(lo, hi, width=32 if dtype == np.float32 else 64),
                            min_size=1, max_size=40))
    err = _ulp_error(dtype, np.array(xs, dtype=dtype))
    assert err.max() <= 1.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_fast_edges_follow_ieee(dtype):
    fi = np.finfo(dtype)
    big = 89.0 if dtype == np.float32 else 710.0     # just past overflow
    tiny = -110.0 if dtype == np.float32 else -750.0  # past the last subnormal
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, big, tiny, 1e30, -1e30,
                  math.log(fi.max) * 0.99999, math.log(fi.max) * 1.00001], dtype=dtype)
    got = np.empty_like(x)
    _exp_all(x, got)
    assert got[0] == 1 and got[1] == 1
    assert got[2] == np.inf and got[3] == 0 and np.isnan(got[4])
    assert got[5] == np.inf and got[6] == 0 and got[7] == np.inf and got[8] == 0
    assert np.isfinite(got[9]) and got[10] == np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_fast_subnormal_results_are_close_in_absolute_terms(dtype):
    fi = np.finfo(dtype)
    lo = math.log(float(fi.smallest_subnormal))
    x = np.linspace(lo - 1.0, math.log(float(fi.tiny)), 2001).astype(dtype)
    got = np.empty_like(x)
    _exp_all(x, got)
    exact = np.exp(x.astype(np.float64 if dtype == np.float32 else np.longdouble))
    # rounded twice (the two power-of-two factors): within two subnormal steps
    assert np.all(np.abs(got - exact) <= 2 * float(fi.smallest_subnormal))
    assert np.all(got >= 0)


# ---------------------------------------------------------------- log_fast

from optkern.kernels._helpers import log_fast  # noqa: E402


@njit
def _log_all(a, out):
    for i in range(a.shape[0]):
        out[i] = log_fast(a[i])


def _log_ulp_error(dtype, x):
    return _ulp_error(dtype, x, _log_all, np.log)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_fast_is_within_one_ulp(dtype):
    """Over the whole positive range (subnormals included), near 1 (where the
    result is small and its relative error shows), and around the reduction's
    switch at sqrt(2)."""
    fi = np.finfo(dtype)
    rng = np.random.default_rng(1)
    lo, hi = math.log(float(fi.smallest_subnormal)), math.log(float(fi.max))
    x = np.concatenate([np.exp(rng.uniform(lo, hi, 200_000)),
                        1.0 + rng.uniform(-1e-3, 1e-3, 50_000),
                        rng.uniform(0.5, 2.0, 50_000),
                        np.linspace(math.sqrt(2) * 0.999, math.sqrt(2) * 1.001, 2001),
                        [fi.max, fi.tiny, fi.smallest_subnormal, 1.0, 2.0, 0.5]])
    x = x[(x > 0) & np.isfinite(x)].astype(dtype)
    x = x[x > 0]
    err = _log_ulp_error(dtype, x)
    assert err.max() <= 1.0, (err.max(), x[np.argmax(err)])
    assert err.mean() < 0.1


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_log_fast_random_arguments(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    width = 32 if dtype == np.float32 else 64
    xs = data.draw(st.lists(st.floats(0.0, None, width=width, exclude_min=True,
                                      allow_infinity=False, allow_subnormal=True),
                            min_size=1, max_size=40))
    assert _log_ulp_error(dtype, np.array(xs, dtype=dtype)).max() <= 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_fast_edges_follow_ieee(dtype):
    x = np.array([1.0, 0.0, -0.0, -1.0, -np.inf, np.inf, np.nan], dtype=dtype)
    got = np.empty_like(x)
    _log_all(x, got)
    assert got[0] == 0 and not np.signbit(got[0])
    assert got[1] == -np.inf and got[2] == -np.inf
    assert np.isnan(got[3]) and np.isnan(got[4])
    assert got[5] == np.inf and np.isnan(got[6])
    # the Python fallback agrees on the edges
    assert [log_fast(float(v)) for v in x[:3]] == [0.0, -math.inf, -math.inf]
