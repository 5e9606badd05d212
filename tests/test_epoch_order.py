"""The epoch's row order (kernels/order.py and its twin kernels/cython/_order.pyx).

Both implementations are checked against a plain-Python model of the
generator written from its published definition (SplitMix64, the
multiply-shift bounded draw with rejection, Fisher-Yates), and against each
other; then the estimators: every backend trains on the orders this
generator draws.
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import optkern
from optkern import estimators as est_mod
from optkern.kernels import order as O

M64 = (1 << 64) - 1


def _py_mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class _PyGen:
    def __init__(self, seed):
        self.state = _py_mix(seed & M64)

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        return _py_mix(self.state)

    def below(self, s):
        if s < (1 << 32):
            while True:
                m = (self.next() >> 32) * s
                if (m & 0xFFFFFFFF) >= ((1 << 32) - s) % s:
                    return m >> 32
        while True:
            r = self.next()
            if r >= ((1 << 64) - s) % s:
                return r % s


def _py_order(seed, mode, n):
    g = _PyGen(seed)
    if mode == 1:
        return [g.below(n) for _ in range(n)]
    out = list(range(n))
    if mode == 0:
        for i in range(n - 1, 0, -1):
            j = g.below(i + 1)
            out[i], out[j] = out[j], out[i]
    return out


def _numba(seed, mode, n):
    out = np.full(n, -7, np.int64)
    O.draw_order(np.uint64(seed), mode, out)
    return out


@given(seed=st.integers(0, 2 ** 64 - 1), mode=st.sampled_from([0, 1, 2]),
       n=st.integers(0, 300))
def test_numba_order_matches_python_model(seed, mode, n):
    assert _numba(seed, mode, n).tolist() == _py_order(seed, mode, n)


@given(seed=st.integers(0, 2 ** 64 - 1), mode=st.sampled_from([0, 1, 2]),
       n=st.integers(0, 3000))
def test_cython_twin_gives_the_same_orders(seed, mode, n):
    C = pytest.importorskip("optkern.kernels.cython._order")
    out = np.full(n, -7, np.int64)
    C.draw_order(seed, mode, out)
    np.testing.assert_array_equal(out, _numba(seed, mode, n))


@given(seed=st.integers(0, 2 ** 64 - 1), n=st.integers(1, 5000))
def test_modes_draw_what_they_say(seed, n):
    perm = _numba(seed, 0, n)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    rep = _numba(seed, 1, n)
    assert rep.min() >= 0 and rep.max() < n
    np.testing.assert_array_equal(_numba(seed, 2, n), np.arange(n))


def test_bounded_draw_beyond_32_bits_is_in_range_and_matches_model():
    # populations of 2**32 and more take the 64-bit path
    for s in (2 ** 32, 2 ** 32 + 1, 3 * 2 ** 40 + 7, 2 ** 63 + 11):
        state = np.uint64(O._mix(np.uint64(99)))
        g = _PyGen(99)
        for _ in range(50):
            # (Numba hands uint64 back as a Python int: typed int64 on the way in)
            v, state = O._below(state, np.uint64(s))
            state = np.uint64(state)
            assert int(v) == g.below(s) and 0 <= int(v) < s


def test_permutation_positions_are_uniform():
    # where element 0 lands over 6000 seeds, n = 6: chi-square, 5 degrees of
    # freedom, 99.9% quantile 20.5 (a biased bounded draw or an off-by-one in
    # Fisher-Yates fails this by far)
    n, trials = 6, 6000
    counts = np.zeros(n)
    out = np.empty(n, np.int64)
    for s in range(trials):
        O.draw_order(np.uint64(s), 0, out)
        counts[int(np.flatnonzero(out == 0)[0])] += 1
    expected = trials / n
    assert ((counts - expected) ** 2 / expected).sum() < 20.5


def test_estimator_orders_come_from_the_generator():
    # _batches: one draw of the fit's Generator per epoch seeds the order
    clf = optkern.LinearClassifier(sampling="epoch")
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(3):
        order, _bs = clf._batches(rng_a, 101)
        seed = int(rng_b.integers(0, 2 ** 63))
        np.testing.assert_array_equal(order, _py_order(seed, 0, 101))
    clf.set_params(sampling="replacement")
    order, _bs = clf._batches(rng_a, 50)
    np.testing.assert_array_equal(order, _py_order(int(rng_b.integers(0, 2 ** 63)), 1, 50))
    clf.set_params(sampling="sequential")
    np.testing.assert_array_equal(clf._batches(rng_a, 9)[0], np.arange(9))


@pytest.mark.parametrize("sampling", ["epoch", "replacement"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_backend_trains_on_the_same_minibatches(sampling, dtype):
    # the compiled epochs agree with the NumPy reference epoch only if they
    # see the same minibatches in the same order: batch 7 of 83 rows makes
    # the order matter (a different shuffle moves the weights far more than
    # rounding does)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((83, 6)).astype(dtype)
    y = rng.integers(0, 3, 83)
    kw = dict(optimizer="adam", batch_size=7, max_epochs=3, tol=None, random_state=11,
              sampling=sampling)
    ref = optkern.LinearClassifier(backend="numpy", **kw).fit(X, y)
    other = optkern.LinearClassifier(backend="numpy", **dict(kw, random_state=12)).fit(X, y)
    rtol = 2e-3 if dtype == np.float32 else 1e-9
    far = np.abs(other.coef_ - ref.coef_).max()
    assert far > 100 * rtol * np.abs(ref.coef_).max()
    for backend in ("numba", "numba-parallel", "cython"):
        if backend not in optkern.available_backends():
            continue
        got = optkern.LinearClassifier(backend=backend, **kw).fit(X, y)
        np.testing.assert_allclose(got.coef_, ref.coef_, rtol=rtol,
                                   atol=rtol * np.abs(ref.coef_).max())


def test_draw_order_prefers_the_ahead_of_time_twin():
    pytest.importorskip("optkern.kernels.cython._order")
    fn = est_mod._draw_order()
    assert type(fn).__module__ != "numba.core.registry"
    out = np.empty(40, np.int64)
    fn(2 ** 63 + 1, 0, out)
    np.testing.assert_array_equal(out, _numba(2 ** 63 + 1, 0, 40))
