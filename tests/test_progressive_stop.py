"""The first-epoch rule of the sparse, wide defaults (estimators.PROGRESSIVE_*):
a fresh fit's first epoch scores every row before training on it, so the
second half's segment losses are held-out losses; the fit stops after one
epoch unless they fall by at least PROGRESSIVE_T standard errors of their
least-squares slope.  docs/sparse.md, "Seventh round"."""

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st
from scipy import stats

import optkern
from optkern import estimators as E


def _wide(seed, n, k=2, signal=True, d=6000, density=0.004):
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", random_state=seed)
    if signal:
        y = np.asarray((X @ rng.standard_normal((d, k))).argmax(1)).ravel()
    else:
        y = rng.integers(0, k, n)
    return X, y


def _segments_of(losses, marks, n, cut_more=1):
    """[(start, stop, mean)] of segments with means ``losses``, each segment
    optionally cut into ``cut_more`` pieces of the same mean."""
    cuts = [0] + list(marks) + [n]
    out = []
    for (a, b), v in zip(zip(cuts[:-1], cuts[1:]), losses):
        inner = np.linspace(a, b, cut_more + 1).astype(int)
        out += [(int(p), int(q), float(v)) for p, q in zip(inner[:-1], inner[1:]) if q > p]
    return out


def test_marks():
    assert E.progressive_marks(63 * 16, 16) is None          # < 2 minibatches a segment
    for n, bs in ((64 * 16, 16), (192_000, 16), (20_001, 16), (5000, 7)):
        marks = E.progressive_marks(n, bs)
        assert len(marks) == E.PROGRESSIVE_SEGMENTS - 1
        assert all(m % bs == 0 for m in marks)
        assert all(0 < a < b < n for a, b in zip(marks[:-1], marks[1:]))
        sizes = np.diff([0] + marks + [n])
        nb = -(-n // bs)
        # equal minibatch counts within one (the tail minibatch may be short)
        assert sizes.max() - sizes[:-1].min() <= bs and sizes.min() > 0
        assert -(-sizes[-1] // bs) >= nb // E.PROGRESSIVE_SEGMENTS


@settings(max_examples=60, deadline=None)
@given(n=st.integers(64 * 16, 400_000), slope=st.floats(-1e-6, 1e-6),
       noise=st.floats(1e-4, 0.05), seed=st.integers(0, 2 ** 32 - 1),
       cut_more=st.integers(1, 3))
def test_trend_is_the_least_squares_t_statistic(n, slope, noise, seed, cut_more):
    """Against scipy.stats.linregress on the second half's segment means,
    however finely the epoch's calls cut the segments."""
    marks = E.progressive_marks(n, 16)
    rng = np.random.default_rng(seed)
    cuts = np.array([0] + marks + [n], float)
    mid = 0.5 * (cuts[:-1] + cuts[1:])
    losses = 0.7 + slope * mid + noise * rng.standard_normal(mid.shape[0])
    t = E.progressive_trend(_segments_of(losses, marks, n, cut_more), marks)
    half = slice(E.PROGRESSIVE_SEGMENTS // 2, None)
    fit = stats.linregress(mid[half], losses[half])
    assert t == pytest.approx(-fit.slope / fit.stderr, rel=1e-6, abs=1e-9)


def test_trend_edges():
    n = 64 * 16
    marks = E.progressive_marks(n, 16)
    m = E.PROGRESSIVE_SEGMENTS
    assert E.progressive_trend(_segments_of([0.5] * m, marks, n), marks) == 0.0
    falling = 1.0 - 1e-3 * np.arange(m)          # an exact fall: no scatter
    # (rounding leaves residuals of ~1e-16: a huge t, or inf when none)
    assert E.progressive_trend(_segments_of(falling, marks, n), marks) > 1e10
    rising = 1.0 + 1e-3 * np.arange(m)
    assert E.progressive_trend(_segments_of(rising, marks, n), marks) < -1e10
    steps = np.r_[np.ones(m // 2), 0.5 * np.ones(m // 2)]   # flat second half
    assert E.progressive_trend(_segments_of(steps, marks, n), marks) == 0.0
    # only the second half counts: a steep first half changes nothing
    flat = np.r_[np.linspace(3.0, 1.0, m // 2), 1.0 + 1e-3 * (-1.0) ** np.arange(m // 2)]
    t = E.progressive_trend(_segments_of(flat, marks, n), marks)
    assert abs(t) < 1.0


def test_stops_after_one_epoch_when_the_held_out_part_stalls():
    """Labels without signal: the held-out loss is flat from early on; the
    default stops after one epoch, scikit-learn's rule (an explicit
    n_iter_no_change) runs on, and its first epoch is the same epoch."""
    X, y = _wide(0, 3000, signal=False)
    auto = optkern.LinearClassifier(random_state=0).fit(X, y)
    assert auto.n_iter_ == 1 and auto._progressive_t < E.PROGRESSIVE_T
    explicit = optkern.LinearClassifier(random_state=0, n_iter_no_change=1).fit(X, y)
    assert explicit.n_iter_ > 1 and not hasattr(explicit, "_progressive_t")
    assert explicit.history_[0]["loss"] == pytest.approx(auto.history_[0]["loss"], rel=1e-12)
    one = optkern.LinearClassifier(random_state=0, max_epochs=1, tol=None).fit(X, y)
    np.testing.assert_array_equal(auto.coef_, one.coef_)   # cut in 32 calls: the same steps
    np.testing.assert_array_equal(auto.intercept_, one.intercept_)


def test_continues_when_the_held_out_part_improves():
    """A strong signal over many features: the held-out loss still falls in
    the second half of the first epoch; the fit continues under the epoch
    rule and the held-out losses are those of one uncut epoch."""
    X, y = _wide(1, 8000, d=4096, density=0.005)     # t = 4.7
    auto = optkern.LinearClassifier(random_state=0).fit(X, y)
    assert auto._progressive_t >= E.PROGRESSIVE_T and auto.n_iter_ > 1
    losses = [h["loss"] for h in auto.history_]
    assert min(losses[:-1]) - losses[-1] < 0.01 * min(losses[:-1])   # the epoch rule stopped it


@pytest.mark.parametrize("optimizer", ["auto", "momentum", "sgd"])
def test_every_backend_decides_alike(optimizer):
    """The NumPy reference (cut at the marks), the Numba epoch and the Cython
    twin (cut with their blocks) give the same held-out losses, decision and
    weights; lazy (Adagrad), linear (momentum) and scaled (plain SGD, L2)."""
    X, y = _wide(2, 1500, k=3, d=5000)
    kw = dict(random_state=0, optimizer=optimizer, max_epochs=3)
    if optimizer != "auto":
        kw["lr"] = 0.05
    fits = {}
    for backend in ("numpy", "numba", "cython"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[backend] = optkern.LinearClassifier(backend=backend, **kw).fit(X, y)
    ref = fits["numpy"]
    assert hasattr(ref, "_progressive_t")
    for be in ("numba", "cython"):
        m = fits[be]
        assert m.n_iter_ == ref.n_iter_
        assert m._progressive_t == pytest.approx(ref._progressive_t, rel=1e-6, abs=1e-6)
        np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-5, atol=1e-8)
        if optimizer == "auto":
            # (the dense-step reference adds each minibatch's penalty to its
            # loss, the compiled epochs the end's: equal for lazy only)
            np.testing.assert_allclose(m.history_[0]["loss"], ref.history_[0]["loss"],
                                       rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_held_out_losses_equal_a_numpy_recomputation(dtype):
    """Each segment's loss is the mean log loss of its rows under the weights
    before their minibatch's step: replayed in NumPy from the per-minibatch
    weights of a plain loop over the same order (plain SGD, no penalty, so
    the weights after each minibatch are easy to recompute)."""
    X, y = _wide(3, 1100, k=2, d=5000)
    X = X.astype(dtype)
    m = optkern.LinearClassifier(random_state=0, optimizer="sgd", lr=0.5, alpha=0.0,
                                 loss="log", backend="numba", max_epochs=1)
    from optkern import sparse_epochs
    seen = {}
    orig = sparse_epochs.SparseRunner.__call__

    def spy(self, order, batch_size, block=None, marks=()):
        seen["order"], seen["marks"] = np.array(order), list(marks)
        out = orig(self, order, batch_size, block=block, marks=marks)
        seen["segments"] = list(self.segments)
        return out
    sparse_epochs.SparseRunner.__call__ = spy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(X, y)
    finally:
        sparse_epochs.SparseRunner.__call__ = orig
    # max_epochs=1 still cuts the first epoch (the rule applies, then ends)
    order, marks = seen["order"], seen["marks"]
    assert len(marks) == E.PROGRESSIVE_SEGMENTS - 1
    w = np.zeros(X.shape[1])
    b = 0.0
    row_loss = np.empty(order.shape[0])
    yy = (y == m.classes_[1]).astype(float)
    Xd = X.astype(np.float64).tocsr()
    for s in range(0, order.shape[0], 16):
        rows = order[s:s + 16]
        z = Xd[rows] @ w + b
        row_loss[s:s + 16] = np.logaddexp(0.0, z) - yy[rows] * z
        g = 1.0 / (1.0 + np.exp(-z)) - yy[rows]
        w -= 0.5 * (Xd[rows].T @ g) / rows.shape[0]
        b -= 0.5 * g.mean()
    cuts = [0] + marks + [order.shape[0]]
    expect = [row_loss[a:c].mean() for a, c in zip(cuts[:-1], cuts[1:])]
    got = np.zeros(len(expect))
    rows_in = np.zeros(len(expect))
    for start, stop, mean in seen["segments"]:
        j = int(np.searchsorted(cuts, start, side="right")) - 1
        got[j] += mean * (stop - start)
        rows_in[j] += stop - start
    tol = 1e-3 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(got / rows_in, expect, rtol=tol)


def test_where_the_rule_does_not_apply():
    X, y = _wide(0, 3000, signal=False)
    cases = [dict(n_iter_no_change=3), dict(tol=None, max_epochs=2),
             dict(early_stopping=True), dict(sampling="replacement"),
             dict(schedule="adaptive"), dict(sparse_updates="dense"),
             dict(optimizer="sgd", penalty="l1", lr=0.05)]
    for kw in cases:
        kw = dict(dict(random_state=0, max_epochs=3), **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = optkern.LinearClassifier(**kw).fit(X, y)
        assert not hasattr(m, "_progressive_t"), kw
    # dense data: the dense defaults, unchanged
    Xd = np.asarray(X[:, :40].todense()) + 0.01
    m = optkern.LinearClassifier(random_state=0, max_epochs=3).fit(Xd, y)
    assert not hasattr(m, "_progressive_t")
    # a warm start and partial_fit continue a trained model: not held out
    w = optkern.LinearClassifier(random_state=0, max_epochs=1, tol=None, warm_start=True)
    w.fit(X, y)
    w.set_params(tol=1e-3, max_epochs=3).fit(X, y)
    assert not hasattr(w, "_progressive_t")
    p = optkern.LinearClassifier(random_state=0).partial_fit(X, y, classes=[0, 1])
    assert not hasattr(p, "_progressive_t")
