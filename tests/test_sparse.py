"""Sparse updates (kernels/sparse_rules.py, sparse_epoch_drivers.py, sparse_reference.py).

* "exact" agrees with "dense" to rounding for every optimizer and option set
  that claims it (the L1 part of plain SGD: with the cumulative-penalty
  oracle), over random sparsity patterns with empty rows, features that
  occur once and features that never occur;
* "lazy" agrees with the NumPy oracle of its documented semantics, for every
  update rule, per-example and minibatch, with averaging and noise;
* FTRL agrees with Algorithm 1 of the paper written out coordinate by
  coordinate, exact zeros included;
* the closed forms' premises (linearity of the untouched step) hold;
* unsorted/duplicate indices, int64 indices and bad CSR structure;
* the sparse, wide defaults.
"""

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

import optkern
from optkern import estimators as E
# the module whose epoch reads SPARSE_EPOCH_BLOCK_WORK: patched there (estimators
# re-exports the value, so patching it there would not reach the fit)
from optkern import _backend, _lin_epochs
from optkern.kernels import rules, sparse_rules

from conftest import assert_close


def _csr(seed, n=50, d=40, density=0.1, empty_rows=True, dtype=np.float64):
    """A CSR problem with empty rows, features that occur once and features
    that never occur (the last 5 columns)."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, d - 5, density=density, format="lil", random_state=seed, dtype=dtype)
    if empty_rows:
        for i in rng.choice(n, size=3, replace=False):
            X[i, :] = 0
    X = sp.csr_matrix(X, shape=(n, d - 5))
    X = sp.hstack([X, sp.csr_matrix((n, 5), dtype=dtype)], format="csr")
    X.data[:] = rng.standard_normal(X.nnz).astype(dtype)
    once = rng.integers(0, n)
    X = X.tolil()
    X[once, d - 6] = 1.5                 # a feature that occurs once
    X = sp.csr_matrix(X, dtype=dtype)
    w = rng.standard_normal((d, 3))
    y3 = np.argmax(X @ w + 0.3 * rng.standard_normal((n, 3)), axis=1)
    y2 = (y3 == 0).astype(int)
    return X, y2, y3


def _fit(X, y, mode, backend, **kw):
    kw.setdefault("max_epochs", 2)
    kw.setdefault("tol", None)
    kw.setdefault("random_state", 0)
    m = optkern.LinearClassifier(sparse_updates=mode, backend=backend, **kw)
    return m.fit(X, y)


# (optimizer, options) that claim "exact", with the penalty they claim it for
EXACT_CASES = [
    ("sgd", dict(alpha=1e-2)),
    ("sgd", dict(alpha=1e-2, schedule=optkern.schedules.InverseScaling(0.1, 0.7))),
    ("sgd", dict(alpha=1e-2, optimizer_params={"weight_decay": 0.01})),
    ("momentum", dict(alpha=1e-2)),
    ("nesterov", dict(alpha=1e-3, optimizer_params={"dampening": 0.0})),
    ("momentum", dict(alpha=1e-2, optimizer_params={"dampening": 0.3}, average=3)),
    ("sgd", dict(alpha=1e-2, average=True)),
    ("adagrad", dict(alpha=0.0)),
    ("rmsprop", dict(alpha=0.0, optimizer_params={"centered": True})),
    ("rmsprop", dict(alpha=0.0, optimizer_params={"momentum": 0.5})),
    ("adadelta", dict(alpha=0.0)),
    ("ftrl", dict(alpha=1e-2, penalty="elasticnet", l1_ratio=0.5)),
]


@pytest.mark.parametrize("name, kw", EXACT_CASES,
                         ids=[f"{n}-{j}" for j, (n, _) in enumerate(EXACT_CASES)])
@settings(max_examples=2)
@given(seed=st.integers(0, 10_000), batch=st.sampled_from([1, 7]),
       classes=st.sampled_from([2, 3]))
def test_exact_agrees_with_dense(name, kw, seed, batch, classes):
    X, y2, y3 = _csr(seed)
    y = y2 if classes == 2 else y3
    dense = _fit(X, y, "dense", "numba", optimizer=name, batch_size=batch, **kw)
    exact = _fit(X, y, "exact", "numba", optimizer=name, batch_size=batch, **kw)
    ref = _fit(X, y, "exact", "numpy", optimizer=name, batch_size=batch, **kw)
    np.testing.assert_allclose(exact.coef_, dense.coef_, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(exact.intercept_, dense.intercept_, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(ref.coef_, dense.coef_, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("penalty", ["l1", "elasticnet"])
@settings(max_examples=2)
@given(seed=st.integers(0, 10_000), batch=st.sampled_from([1, 5]))
def test_exact_sgd_l1_is_the_cumulative_penalty(penalty, seed, batch):
    X, y, _ = _csr(seed)
    kw = dict(optimizer="sgd", alpha=0.02, penalty=penalty, l1_ratio=0.6, batch_size=batch,
              schedule=optkern.schedules.InverseScaling(0.05, 0.5))
    got = _fit(X, y, "exact", "numba", **kw)
    ref = _fit(X, y, "exact", "numpy", **kw)        # every weight clipped every step
    np.testing.assert_allclose(got.coef_, ref.coef_, rtol=1e-9, atol=1e-11)
    assert np.sum(got.coef_ == 0) == np.sum(ref.coef_ == 0) > 0   # exact zeros
    dense = _fit(X, y, "dense", "numba", **kw)      # the subgradient path: near, not equal
    assert np.max(np.abs(got.coef_ - dense.coef_)) < 0.1


def test_exact_float32_agrees_to_float32_rounding():
    X, y, _ = _csr(3, dtype=np.float32)
    for name in ("sgd", "momentum"):
        a = _fit(X, y, "exact", "numba", optimizer=name, batch_size=4, alpha=1e-2)
        b = _fit(X, y, "dense", "numba", optimizer=name, batch_size=4, alpha=1e-2)
        assert a.coef_.dtype == np.float32
        assert_close(a.coef_, b.coef_, np.float32, name)


LAZY_CASES = [
    ("adam", dict(alpha=1e-2)),
    ("adamw", dict(alpha=1e-2, average=2)),
    ("adamax", dict(alpha=1e-2, penalty="l1")),
    ("nadam", dict(alpha=1e-2)),
    ("radam", dict(alpha=1e-2, penalty="elasticnet")),
    ("adagrad", dict(alpha=1e-2)),
    ("rmsprop", dict(alpha=1e-2)),
    ("adadelta", dict(alpha=1e-2)),
    ("sgd", dict(alpha=1e-2, optimizer_params={"noise": 0.01})),
    ("sgld", dict(alpha=1e-3)),
    ("momentum", dict(alpha=1e-2, penalty="l1")),
    ("ftrl", dict(alpha=1e-3)),
]


@pytest.mark.parametrize("name, kw", LAZY_CASES,
                         ids=[f"{n}-{j}" for j, (n, _) in enumerate(LAZY_CASES)])
@settings(max_examples=2)
@given(seed=st.integers(0, 10_000), batch=st.sampled_from([1, 6]),
       sampling=st.sampled_from(["epoch", "replacement"]))
def test_lazy_agrees_with_its_numpy_oracle(name, kw, seed, batch, sampling):
    X, _, y = _csr(seed)
    got = _fit(X, y, "lazy", "numba", optimizer=name, batch_size=batch, sampling=sampling,
               **kw)
    ref = _fit(X, y, "lazy", "numpy", optimizer=name, batch_size=batch, sampling=sampling,
               **kw)
    # (the oracle sums the batch gradient in another order; Adagrad's and Adam's
    # normalised steps carry that rounding along: a gradient sum that cancels to
    # near eps turns a rounding of 1e-16 into lr * 1e-16 / eps = 1e-7 lr on that
    # weight -- 2.2e-8 seen for Adagrad (eps 1e-10) on one drawn case, where the
    # tolerance was 1e-8 -- so the absolute tolerance is 1e-7 of the largest
    # weight; a wrong step or penalty scale is off by orders more)
    atol = 1e-7 * max(1.0, np.abs(ref.coef_).max())
    np.testing.assert_allclose(got.coef_, ref.coef_, rtol=1e-7, atol=atol)
    np.testing.assert_allclose(got.intercept_, ref.intercept_, rtol=1e-7, atol=atol)
    np.testing.assert_allclose([h["loss"] for h in got.history_],
                               [h["loss"] for h in ref.history_], rtol=1e-7)
    # features that never occur keep their (zero) weights
    assert np.all(got.coef_[:, -5:] == 0)


def test_lazy_leaves_untouched_rows_and_state_alone():
    X, y, _ = _csr(1)
    m = _fit(X, y, "lazy", "numba", optimizer="adam", batch_size=5, max_epochs=1)
    opt = optkern.Adam([np.zeros((1, 1))])      # (only for the state names)
    del opt
    st_ = m._opt_state["state"][0]
    never = slice(X.shape[1] - 5, X.shape[1])
    assert np.all(st_["exp_avg"][never] == 0) and np.all(st_["exp_avg_sq"][never] == 0)


def test_regressor_and_sample_weights_in_lazy_mode():
    X, y, _ = _csr(5)
    rng = np.random.default_rng(0)
    target = np.asarray(X @ rng.standard_normal((X.shape[1], 2)))
    sw = rng.uniform(0.2, 2.0, X.shape[0])
    kw = dict(optimizer="adam", batch_size=4, max_epochs=2, tol=None, random_state=0,
              alpha=1e-2, sparse_updates="lazy")
    a = optkern.LinearRegressor(backend="numba", **kw).fit(X, target, sample_weight=sw)
    b = optkern.LinearRegressor(backend="numpy", **kw).fit(X, target, sample_weight=sw)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-9, atol=1e-11)


# ------------------------------------------------------------------ closed forms

LINEAR = [("sgd", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01), 0.02),
          ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True), 0.02),
          ("adagrad", dict(lr=0.1), 0.0),
          ("rmsprop", dict(lr=0.01, centered=True, momentum=0.5), 0.0),
          ("adadelta", dict(lr=1.0), 0.0),
          ("ftrl", dict(lr=0.5, l1=0.1), 0.0)]


@pytest.mark.parametrize("name, kw, l2", LINEAR)
def test_untouched_step_is_the_linear_map_read_off_the_rule(name, kw, l2):
    opt = optkern.OPTIMIZERS[name]([np.zeros(3)], **kw)
    user = dict(zip(opt._spec.user_hyper, opt._hyper_tuple(opt.param_groups[0])))
    kind, _ = sparse_rules.exact_kind(name, user, l2, 0.0, False, True)
    assert kind == "linear"
    hyper, _ = opt._spec.prepare(5, opt._groups[0].scalars, user["lr"],
                                 *opt._hyper_tuple(opt.param_groups[0])[1:])
    present = [s is not None for s in opt._groups[0].state_list]
    M = sparse_rules.untouched_matrix(name, hyper, l2, present)
    rng = np.random.default_rng(0)
    spec = rules.RULES[name]
    live = np.array([1.0] + present, dtype=float)
    x = np.zeros(M.shape[0])
    for _ in range(5):
        # a reachable point: a few steps of random gradients from a random p
        x[0] = rng.standard_normal()
        for g in rng.standard_normal(3):
            x = np.array(spec.rule(x[0], g, *x[1:], *hyper, 0.0)) * live
        out = spec.rule(x[0], l2 * x[0], *x[1:], *hyper, 0.0)
        want = np.array([out[0]] + [o if p else 0.0 for o, p in zip(out[1:], present)])
        np.testing.assert_allclose(M @ x, want, rtol=1e-12, atol=1e-14)
    P, S = sparse_rules.power_tables(M, 37)
    A = np.eye(M.shape[0])
    Ssum = np.zeros_like(M)
    for _ in range(37):
        A = M @ A
        Ssum += A
    g, j, A2, S2 = 37, 0, np.eye(M.shape[0]), np.zeros_like(M)
    while g:
        if g & 1:
            S2 = S2 + A2 @ S[j]
            A2 = A2 @ P[j]
        g >>= 1
        j += 1
    np.testing.assert_allclose(A2, A, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(S2, Ssum, rtol=1e-10, atol=1e-13)


def test_exact_is_refused_where_it_does_not_exist():
    X, y, _ = _csr(0)
    for name, kw in [("adam", {}), ("momentum", dict(penalty="l1")),
                     ("momentum", dict(schedule="invscaling")),
                     ("sgd", dict(optimizer_params={"noise": 0.1})), ("sgld", {}),
                     ("adagrad", dict(alpha=1e-3))]:
        with pytest.raises(ValueError, match="sparse_updates='exact'"):
            _fit(X, y, "exact", "numba", optimizer=name, max_epochs=1, **kw)
        # auto falls back to lazy
        _fit(X, y, "auto", "numba", optimizer=name, max_epochs=1, **kw)


@pytest.mark.parametrize("n, B", [(50, 7), (500, 64), (500, 65), (3000, 300)])
def test_touch_probabilities(n, B):
    # both forms (the product up to PRODUCT_MAX_BATCH, log-gammas above)
    c = np.array([0, 1, 5, n // 3, n - B, n - B + 1, n])
    pi = sparse_rules.touch_probabilities(c, n, B, "epoch")
    want = [1.0 - math.comb(n - ci, B) / math.comb(n, B) for ci in c]
    np.testing.assert_allclose(pi, want, rtol=1e-9)
    pr = sparse_rules.touch_probabilities(c, n, B, "replacement")
    np.testing.assert_allclose(pr, 1.0 - (1.0 - c / n) ** B, rtol=1e-12)
    np.testing.assert_allclose(sparse_rules.touch_probabilities(c, n, 1, "epoch"), c / n)
    # the lazy penalty's factors: 1/pi_f, and 0 for a feature in no row
    for sampling, p in (("epoch", pi), ("replacement", pr)):
        for dtype in (np.float32, np.float64):
            got = sparse_rules.lazy_scales(c, n, B, sampling, dtype)
            assert got.dtype == dtype and got[0] == 0.0
            np.testing.assert_array_equal(got[1:], (1.0 / p[1:]).astype(dtype))


def test_touch_probabilities_of_rare_features_at_scale():
    # a feature in 1 or 2 of 192,000 rows, batch 16: the log-gamma form was
    # 2.4e-6 off (relative) there
    n, B = 192_000, 16
    c = np.array([1, 2, 10, 1000])
    pi = sparse_rules.touch_probabilities(c, n, B, "epoch")
    want = [1.0 - math.comb(n - ci, B) / math.comb(n, B) for ci in c]
    np.testing.assert_allclose(pi, want, rtol=1e-10)  # 1 - miss cancels ~4e-12


# ------------------------------------------------------------------------- FTRL

def _ftrl_algorithm_1(w0, grads, alpha, beta, l1, l2):
    """McMahan et al. 2013, Algorithm 1, coordinate by coordinate: for each
    round, the coordinates i with a nonzero gradient (the example's features)."""
    w = list(w0)
    z = [0.0] * len(w)
    nn = [0.0] * len(w)
    for g in grads:
        for i, gi in enumerate(g):
            if gi == 0:
                continue
            sigma = (math.sqrt(nn[i] + gi * gi) - math.sqrt(nn[i])) / alpha
            z[i] += gi - sigma * w[i]
            nn[i] += gi * gi
            if abs(z[i]) <= l1:
                w[i] = 0.0
            else:
                sgn = 1.0 if z[i] > 0 else -1.0
                w[i] = -(z[i] - sgn * l1) / ((beta + math.sqrt(nn[i])) / alpha + l2)
    return np.array(w), np.array(z), np.array(nn)


@pytest.mark.parametrize("backend", ["numpy", "numba", "numba-parallel", "cython", "cuda"])
def test_ftrl_is_algorithm_1(backend):
    if backend == "cython" and not optkern.available_backends().count("cython"):
        pytest.skip("Cython kernels not built")
    rng = np.random.default_rng(7)
    d = 30
    grads = rng.standard_normal((25, d))
    grads[rng.random((25, d)) < 0.6] = 0.0      # sparse rounds
    want_w, want_z, want_n = _ftrl_algorithm_1(np.zeros(d), grads, 0.3, 0.8, 0.4, 0.2)
    w = np.zeros(d)
    opt = optkern.FTRL([w], lr=0.3, beta=0.8, l1=0.4, l2=0.2, backend=backend)
    for g in grads:
        opt.step([g.copy()])
    state = opt.state_dict()["state"][0]
    np.testing.assert_allclose(w, want_w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(state["linear"], want_z, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(state["accumulator"], want_n, rtol=1e-12)
    assert np.array_equal(w == 0, want_w == 0) and np.sum(w == 0) > 0


def test_ftrl_rejects_bad_hyperparameters():
    for kw, what in [(dict(lr=0.0), "lr"), (dict(lr_power=0.5), "lr_power"),
                     (dict(l1=-1.0), "l1"), (dict(beta=-1.0), "beta"),
                     (dict(initial_accumulator_value=-0.1), "initial_accumulator_value")]:
        with pytest.raises(ValueError, match=what):
            optkern.FTRL([np.zeros(3)], **kw)


def test_ftrl_estimator_penalty_is_proximal():
    X, y, _ = _csr(4, n=120)
    m = _fit(X, y, "auto", "numba", optimizer="ftrl", penalty="l1", alpha=0.02,
             batch_size=1, max_epochs=2)
    assert np.sum(m.coef_ == 0) > X.shape[1] // 4        # exact zeros from the L1 term
    assert m._opt_state["param_groups"][0]["l1_per_step"] == pytest.approx(0.02)
    assert m._opt_state["param_groups"][1]["l1_per_step"] == 0.0    # intercept


# ------------------------------------------------------------------ input forms

def test_unsorted_duplicate_and_int64_indices_train_as_the_canonical_matrix():
    X, y, _ = _csr(9)
    ref = _fit(X, y, "lazy", "numba", optimizer="adam", batch_size=3)
    # the same matrix with its nonzeros split in two duplicates, in reverse order
    rows, cols, vals = [], [], []
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        for q in reversed(range(lo, hi)):
            rows += [i, i]
            cols += [X.indices[q]] * 2
            vals += [X.data[q] * 0.25, X.data[q] * 0.75]
    indptr = np.searchsorted(np.array(rows), np.arange(X.shape[0] + 1))
    messy = sp.csr_matrix((np.array(vals), np.array(cols), indptr), shape=X.shape)
    messy.indices = messy.indices.astype(np.int64)   # scipy picks int32 by itself
    messy.indptr = messy.indptr.astype(np.int64)
    messy.has_canonical_format = False
    assert not messy.has_canonical_format and messy.indices.dtype == np.int64
    # (no penalty: the lazy penalty's pi_f counts stored entries, so duplicates
    # change it; documented)
    for batch in (1, 3):
        a = _fit(X, y, "lazy", "numba", optimizer="adam", batch_size=batch, alpha=0.0)
        b = _fit(messy, y, "lazy", "numba", optimizer="adam", batch_size=batch, alpha=0.0)
        np.testing.assert_allclose(b.coef_, a.coef_, rtol=1e-7, atol=1e-9)
    assert ref is not None


def test_bad_csr_input_is_named():
    X, y, _ = _csr(2)
    bad = sp.csr_matrix((X.data, X.indices.copy(), X.indptr), shape=X.shape)
    bad.indices[3] = X.shape[1] + 4
    with pytest.raises(ValueError, match="column indices .* outside"):
        _fit(bad, y, "auto", "numba")
    huge = sp.csr_matrix((np.ones(1), np.array([5], np.int64), np.array([0, 1] + [1] * 9)),
                         shape=(10, 2 ** 31 + 5))
    with pytest.raises(ValueError, match="2\\^31 or more"):
        _fit(huge, np.arange(10) % 2, "auto", "numba")
    with pytest.raises(ValueError, match="sparse_updates"):
        _fit(X, y, "sparse", "numba")


def test_sparse_wide_defaults():
    rng = np.random.default_rng(0)
    X = sp.random(300, 5000, density=0.002, format="csr", random_state=0)
    y = rng.integers(0, 2, 300)
    m = optkern.LinearClassifier(max_epochs=2, random_state=0).fit(X, y)
    assert E.sparse_wide(X) and m._optimizer_name() == "adagrad"
    assert m._alpha_value() == pytest.approx(1.0 / 300)
    assert m._batch_size(300) == E.SPARSE_WIDE_DEFAULTS["batch_size"]
    dense = optkern.LinearClassifier(max_epochs=2, random_state=0).fit(X.toarray()[:, :50], y)
    assert dense._optimizer_name() == "adam" and dense._alpha_value() == 1e-4
    narrow = sp.csr_matrix(X[:, :100])
    assert not E.sparse_wide(narrow)
    assert m._n_iter_no_change() == 1 and dense._n_iter_no_change() == 5


@pytest.mark.parametrize("wide", [True, False])
def test_sparse_wide_default_stops_at_the_first_epoch_without_improvement(wide):
    """n_iter_no_change="auto": on sparse, wide data the fit stops after the
    first epoch whose loss does not improve by tol (the loss history says
    where); elsewhere scikit-learn's 5 epochs in a row."""
    rng = np.random.default_rng(1)
    X = sp.random(400, 5000, density=0.003, format="csr", random_state=1)
    y = (X @ rng.standard_normal(5000) > 0).astype(int)
    if not wide:
        X = sp.csr_matrix(X[:, :200].toarray() + 0.01)     # dense enough: not "wide"
    m = optkern.LinearClassifier(random_state=0, tol=1e-2, max_epochs=60).fit(X, y)
    losses = [h["loss"] for h in m.history_]
    patience = 1 if wide else 5
    best, misses, stop = np.inf, 0, None
    for e, loss in enumerate(losses):
        # wide: also 1% of the best loss so far (SPARSE_WIDE_DEFAULTS["rel_tol"])
        need = 1e-2 if (not wide or best == np.inf) else max(1e-2, 0.01 * abs(best))
        misses = 0 if loss <= best - need else misses + 1
        best = min(best, loss)
        if misses >= patience:
            stop = e + 1
            break
    if wide:
        assert stop == len(losses)
    else:    # the adaptive rate continues after a stall: at least 5 epochs then
        assert stop is not None and stop <= len(losses) and len(losses) >= 6
    with pytest.raises(ValueError, match="n_iter_no_change"):
        optkern.LinearClassifier(n_iter_no_change="never").fit(X, y)


def test_stall_rule_relative_tolerance():
    """rel_tol: an epoch must improve the best loss by max(tol, rel_tol*|best|)."""
    st = E._Stall(1e-3, 1, rel_tol=0.01)
    assert not st.stalled(3.0)            # the first epoch always counts
    assert not st.stalled(2.9)            # -0.1 >= 0.03
    assert st.stalled(2.88)               # -0.02 < 0.029: stalled
    plain = E._Stall(1e-3, 1)
    for loss in (3.0, 2.9, 2.88, 2.875):  # absolute 1e-3 only: still improving
        assert not plain.stalled(loss)


@pytest.mark.filterwarnings("ignore:maximum number of epochs")
def test_sparse_wide_auto_stops_on_a_relative_stall():
    """20 classes on sparse, wide data: the loss (about ln 20 = 3) keeps
    improving by more than an absolute tol long after it improves by less than
    1%; n_iter_no_change="auto" stops there, an explicit 1 (scikit-learn's
    absolute rule) continues."""
    # seed 5: 10 epochs, the last improving 0.4%, the one before 1.3% (clear
    # of the 1% line whichever kernel, twin or Numba, runs the epochs)
    rng = np.random.default_rng(5)
    X = sp.random(2000, 6000, density=0.004, format="csr", random_state=5)
    y = np.asarray((X @ rng.standard_normal((6000, 20))).argmax(1)).ravel()
    auto = optkern.LinearClassifier(random_state=0, tol=1e-6, max_epochs=40).fit(X, y)
    assert auto._stall_rel_tol() == E.SPARSE_WIDE_DEFAULTS["rel_tol"] == 0.01
    losses = [h["loss"] for h in auto.history_]
    assert min(losses[:-1]) - losses[-1] < 0.01 * min(losses[:-1])     # the last epoch stalled
    assert all(a - b >= 0.01 * a for a, b in zip(losses[:-2], losses[1:-1]))  # the others did not
    explicit = optkern.LinearClassifier(random_state=0, tol=1e-6, max_epochs=40,
                                        n_iter_no_change=1).fit(X, y)
    assert explicit._stall_rel_tol() == 0.0
    assert len(explicit.history_) > len(auto.history_)
    np.testing.assert_allclose([h["loss"] for h in explicit.history_][:len(losses)], losses)


def test_fit_does_not_copy_X():
    import tracemalloc

    rng = np.random.default_rng(0)
    n, d, nnz = 20_000, 2 ** 16, 20
    indptr = np.arange(0, n * nnz + 1, nnz, dtype=np.int32)
    X = sp.csr_matrix((rng.random(n * nnz).astype(np.float32),
                       rng.integers(0, d, n * nnz).astype(np.int32), indptr), shape=(n, d))
    y = rng.integers(0, 2, n)
    optkern.LinearClassifier(max_epochs=1, random_state=0).fit(X[:100], y[:100])  # warm-up
    size = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    tracemalloc.start()
    optkern.LinearClassifier(max_epochs=2, random_state=0, tol=None).fit(X, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # model, states, per-feature maps: a few n_features-sized arrays, nothing of X's size
    assert peak < 0.5 * size + 12 * d * 8, (peak, size)


# ------------------------------------------------- the optimizer classes' sparse step

CLASS_CASES = [("adam", dict(lr=0.01, amsgrad=True)), ("nadam", dict(lr=0.01)),
               ("sgd", dict(lr=0.1, momentum=0.9)), ("sgd", dict(lr=0.1, noise=0.01, seed=3)),
               ("rmsprop", dict(lr=0.01, centered=True)), ("ftrl", dict(lr=0.3, l1=0.05)),
               ("adagrad", dict(lr=0.1))]


def _sparse_run(name, kw, backend, dtype, mode="lazy", average=False, steps=6):
    d, k = 30, 3
    W = np.ones((d, k), dtype)
    b = np.zeros(k, dtype)
    opt = optkern.OPTIMIZERS[name]([W, b], backend=backend, average=average, **kw)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        rows = rng.choice(d, 5, replace=False)
        opt.step([rng.standard_normal((5, k)).astype(dtype),
                  rng.standard_normal(k).astype(dtype)], rows=[rows, None], sparse_updates=mode)
    return W, b, opt


@pytest.mark.parametrize("backend", ["numba", "numba-parallel", "cython", "cuda"])
@pytest.mark.parametrize("name, kw", CLASS_CASES, ids=[f"{n}-{j}" for j, (n, _) in
                                                       enumerate(CLASS_CASES)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_sparse_step_of_every_backend_is_the_reference(name, kw, backend, dtype):
    if backend == "cython" and "cython" not in optkern.available_backends():
        pytest.skip("Cython kernels not built")
    W, b, opt = _sparse_run(name, kw, backend, dtype, average=2)
    Wr, br, ref = _sparse_run(name, kw, "numpy", dtype, average=2)
    assert_close(W, Wr, dtype, "params")
    assert_close(b, br, dtype, "intercept")
    assert_close(opt.averaged_params()[0], ref.averaged_params()[0], dtype, "average")


@pytest.mark.parametrize("name, kw", [("ftrl", dict(lr=0.3, l1=0.05, l2=0.1)),
                                      ("sgd", dict(lr=0.1)), ("adagrad", dict(lr=0.1))])
def test_sparse_step_is_the_dense_step_where_they_coincide(name, kw):
    W1, b1, _ = _sparse_run(name, kw, "numba", np.float64, mode="exact")
    W2, b2, _ = _sparse_run(name, kw, "numba", np.float64, mode="dense")
    np.testing.assert_array_equal(W1, W2)
    np.testing.assert_array_equal(b1, b2)


def test_sparse_step_leaves_untouched_rows_and_rejects_bad_rows():
    W = np.ones((10, 2))
    opt = optkern.Adam([W], lr=0.1)
    opt.step(np.ones((2, 2)), rows=np.array([1, 4]))
    assert np.all(W[[0, 2, 3, 5, 6, 7, 8, 9]] == 1) and np.all(W[[1, 4]] < 1)
    before = W.copy()
    for rows, grad, what in [(np.array([1, 1]), np.ones((2, 2)), "repeats"),
                             (np.array([10]), np.ones((1, 2)), "outside"),
                             (np.array([1]), np.ones((2, 2)), "shape"),
                             (np.array([1.0]), np.ones((1, 2)), "integer")]:
        with pytest.raises((ValueError, TypeError), match=what):
            opt.step(grad, rows=rows)
    with pytest.raises(ValueError, match="exact"):
        opt.step(np.ones((1, 2)), rows=np.array([2]), sparse_updates="exact")
    with pytest.raises(FloatingPointError):
        opt.step(np.full((1, 2), np.nan), rows=np.array([2]))
    np.testing.assert_array_equal(W, before)
    assert opt._groups[0].step == 1


def test_functional_row_kernel():
    from optkern.kernels import adam_rows, adam
    p = np.ones((8, 3))
    m, v = np.zeros_like(p), np.zeros_like(p)
    rows = np.array([2, 5])
    g = np.arange(6.0).reshape(2, 3)
    adam_rows(p, g, rows, m, v, None, 1, 1e-2, 0.9, 0.999, 1e-8, 0.0, False, False, True,
              False)
    q = np.ones((8, 3))
    full = np.zeros_like(q)
    full[rows] = g
    adam(q, full, np.zeros_like(q), np.zeros_like(q), None, 1, 1e-2, 0.9, 0.999, 1e-8, 0.0,
         False, False, True, False)
    np.testing.assert_allclose(p[rows], q[rows], rtol=1e-15)
    assert np.all(p[[0, 1, 3, 4, 6, 7]] == 1)


def test_hashed_feature_spaces_work_as_they_are():
    from sklearn.feature_extraction import FeatureHasher
    from sklearn.feature_extraction.text import HashingVectorizer

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(400)]
    docs = [" ".join(rng.choice(words, 12)) for _ in range(120)]
    y = np.array([int(d.split()[0][1:]) % 3 for d in docs])
    X = HashingVectorizer(n_features=2 ** 22).transform(docs)         # int32 indices
    assert X.shape[1] == 2 ** 22 and X.indices.dtype == np.int32
    a = optkern.LinearClassifier(max_epochs=3, tol=None, random_state=0).fit(X, y)
    assert a.coef_.shape == (3, 2 ** 22) and a._optimizer_name() == "adagrad"
    H = FeatureHasher(n_features=2 ** 20, input_type="string").transform(
        [d.split() for d in docs])
    H.indices = H.indices.astype(np.int64)
    H.indptr = H.indptr.astype(np.int64)
    b = optkern.LinearClassifier(max_epochs=3, tol=None, random_state=0).fit(H, y)
    c = optkern.LinearClassifier(max_epochs=3, tol=None, random_state=0).fit(
        sp.csr_matrix(H, dtype=np.float64), y)
    np.testing.assert_allclose(b.coef_, c.coef_, rtol=1e-12, atol=1e-14)
    assert b.score(H, y) > 0.5


def test_bench_sparse_race_row(capsys):
    from optkern import bench

    assert bench.main(["--sizes", "tiny", "--rows", "sparse", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "sparse: 600 x 2^12, 2 classes" in out and "20 classes" in out
    for name in ("optkern LinearClassifier() defaults", "SGDClassifier", "LogisticRegression",
                 "LIBLINEAR", "Vowpal Wabbit", "Snap ML"):
        assert name in out          # a peer that is not installed is a row with a note


@pytest.mark.parametrize("name,kw", [("adagrad", dict(lr=0.1)), ("adam", dict(lr=0.01)),
                                     ("sgd", dict(lr=0.1, momentum=0.9))])
@pytest.mark.parametrize("average", [False, True])
def test_snapshot_into_reuses_buffers_and_restores(name, kw, average):
    # the estimators keep the last good epoch's optimizer state in the arrays
    # of the previous snapshot (no model-sized allocation per epoch)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((40, 3))
    b = rng.standard_normal(3)
    opt = optkern.OPTIMIZERS[name]([W, b], average=average, **kw)
    opt.step([rng.standard_normal(W.shape), rng.standard_normal(b.shape)])
    snap = opt._snapshot()
    opt.step([rng.standard_normal(W.shape), rng.standard_normal(b.shape)])
    expect = opt.state_dict()
    reused = E._snapshot_into(opt, snap)
    arrays = lambda s: [a for g in s[1] for st in g[0] if st is not None for a in st] + \
        [a for g in s[1] if g[1] is not None for a in g[1]]     # noqa: E731
    assert all(x is y for x, y in zip(arrays(reused), arrays(snap)))
    assert len(arrays(reused)) == len(arrays(snap)) > 0
    for _ in range(2):
        opt.step([rng.standard_normal(W.shape), rng.standard_normal(b.shape)])
    opt._restore(reused)
    got = opt.state_dict()
    for i, st in expect["state"].items():
        for key, v in st.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(got["state"][i][key], v)
            else:
                assert got["state"][i][key] == v


# (optimizer, options, mode) covering the three compiled kinds: lazy, linear
# (catch-up state across blocks, the dense first step, averaging) and scaled
# (the scale and the cumulative L1 amount across blocks)
BLOCK_CASES = [
    ("adagrad", dict(alpha=1e-2), "lazy"),
    ("adam", dict(alpha=1e-2, average=2), "lazy"),
    ("momentum", dict(alpha=1e-2, average=3), "exact"),
    ("sgd", dict(alpha=2e-2, penalty="elasticnet", l1_ratio=0.6), "exact"),
]


@pytest.mark.parametrize("name, kw, mode", BLOCK_CASES,
                         ids=[f"{n}-{m}-{j}" for j, (n, _, m) in enumerate(BLOCK_CASES)])
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.sampled_from([1, 3, 7]),
       dtype=st.sampled_from([np.float32, np.float64]), work=st.integers(1, 400))
def test_blocked_sparse_epoch_is_the_one_call_epoch(name, kw, mode, seed, batch, dtype, work):
    """Ctrl-C needs the epoch in several compiled calls (issue 16): blocks of a
    few minibatches give the same weights and state as one call, and the same
    loss up to the per-block summation."""
    X, _, y = _csr(seed, dtype=dtype)
    kw = dict(kw, optimizer=name, batch_size=batch, max_epochs=2)
    one = _fit(X, y, mode, "numba", **kw)
    assert E._block_rows(X, 3, batch, work) < X.shape[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_lin_epochs, "SPARSE_EPOCH_BLOCK_WORK", work)
        blocked = _fit(X, y, mode, "numba", **kw)
    np.testing.assert_array_equal(blocked.coef_, one.coef_)
    np.testing.assert_array_equal(blocked.intercept_, one.intercept_)
    sa, sb = blocked._opt_state["state"], one._opt_state["state"]
    assert sa.keys() == sb.keys()
    for g in sa:
        assert sa[g].keys() == sb[g].keys()
        for key in sa[g]:
            np.testing.assert_array_equal(sa[g][key], sb[g][key])
    np.testing.assert_allclose([h["loss"] for h in blocked.history_],
                               [h["loss"] for h in one.history_], rtol=1e-5 if dtype ==
                               np.float32 else 1e-10)


def test_blocked_sparse_epoch_answers_an_interrupt(monkeypatch):
    """A KeyboardInterrupt between two blocks of a sparse epoch: the fit keeps
    the last whole epoch's model (the estimators' Ctrl-C rule)."""
    X, y, _ = _csr(5)
    monkeypatch.setattr(_lin_epochs, "SPARSE_EPOCH_BLOCK_WORK", 30)
    per_epoch = -(-X.shape[0] // E._block_rows(X, 1, 4, 30))
    assert per_epoch > 2
    from optkern import sparse_epochs
    calls = []
    real = sparse_epochs.SparseRunner._run

    def run(self, *a, **k):
        calls.append(1)
        if len(calls) == per_epoch + 2:      # the second epoch's second block
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(sparse_epochs.SparseRunner, "_run", run)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        m = _fit(X, y, "lazy", "numba", optimizer="adagrad", batch_size=4, max_epochs=5)
    monkeypatch.setattr(sparse_epochs.SparseRunner, "_run", real)
    ref = _fit(X, y, "lazy", "numba", optimizer="adagrad", batch_size=4, max_epochs=1)
    assert len(m.history_) == 1
    np.testing.assert_array_equal(m.coef_, ref.coef_)


# one output: binary classifiers (log, hinge) and regression (squared), in the
# lazy, linear (catch-up tables) and scaled kinds
K1_CASES = [
    ("log", "adagrad", dict(alpha=1e-2), "lazy"),
    ("log", "momentum", dict(alpha=1e-2), "exact"),
    ("hinge", "sgd", dict(alpha=2e-2, penalty="elasticnet", l1_ratio=0.5), "exact"),
    ("squared", "adagrad", dict(alpha=1e-2), "lazy"),
]


@pytest.mark.parametrize("loss, name, kw, mode", K1_CASES,
                         ids=[f"{lo}-{n}-{m}" for lo, n, _, m in K1_CASES])
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.sampled_from([1, 4]),
       dtype=st.sampled_from([np.float32, np.float64]),
       lr=st.sampled_from([0.01, 0.05]))
def test_one_output_epoch_is_the_general_epoch(loss, name, kw, mode, seed, batch, dtype, lr):
    """The k = 1 twins (epoch_rows_k1, epoch_scaled_k1) give the weights of the
    general epoch bit for bit, and agree with the NumPy sparse reference."""
    from optkern.kernels import sparse_epoch_drivers as sed

    X, y2, _ = _csr(seed, dtype=dtype)
    if loss == "squared":
        y = np.asarray(X @ np.linspace(-1, 1, X.shape[1])).ravel()
        cls = optkern.LinearRegressor
    else:
        y = y2
        cls = optkern.LinearClassifier
    kw = dict(kw, loss=loss, optimizer=name, batch_size=batch, lr=lr, max_epochs=2, tol=None,
              random_state=seed, sparse_updates=mode)
    got = cls(backend="numba", **kw).fit(X, y)
    with pytest.MonkeyPatch.context() as mp:     # the general epoch on one output
        for mod in list(sed._MODULES.values()):
            mp.setattr(mod, "epoch_rows_k1", mod.epoch_rows)
            mp.setattr(mod, "epoch_scaled_k1", mod.epoch_scaled)
        general = cls(backend="numba", **kw).fit(X, y)
    np.testing.assert_array_equal(got.coef_, general.coef_)
    np.testing.assert_array_equal(got.intercept_, general.intercept_)
    ref = cls(backend="numpy", **kw).fit(X, y)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(got.coef_, ref.coef_, **tol)
    np.testing.assert_allclose(got.intercept_, ref.intercept_, **tol)


@settings(max_examples=40, deadline=None)
@given(p=st.floats(-1e3, 1e3), g=st.floats(-1e3, 1e3), lr=st.floats(1e-6, 10.0),
       weight_decay=st.sampled_from([0.0, 1e-4, 0.3]), dampening=st.floats(0.0, 1.0),
       nesterov=st.booleans(), step=st.integers(1, 5))
def test_scaled_mode_rule_is_affine(p, g, lr, weight_decay, dampening, nesterov, step):
    """The scaled epochs (Numba and Cython) update a touched weight by
    V' = V + (a_t / s') g with c_t = rule(1, 0) and a_t = rule(0, 1): that
    needs every rule the "scaled" mode admits to be p' = c_t p + a_t g with a
    zero state.  Checked on the rule itself, for every hyperparameter the
    mode allows (exact_kind: no momentum, noise or maximize)."""
    user = dict(lr=lr, momentum=0.0, dampening=dampening, weight_decay=weight_decay,
                nesterov=float(nesterov), maximize=0.0, noise=0.0)
    assert sparse_rules.exact_kind("sgd", user, 1e-4, 0.0, False, True)[0] == "scaled"
    spec = rules.RULES["sgd"]
    hyper, _ = spec.prepare(step, (), *[user[h] for h in spec.user_hyper])
    ns = len(rules.state_names(spec))

    def rule(p, g):
        return spec.rule(p, g, *([0.0] * ns), *hyper, 0.0)[0]

    c_t, a_t = rule(1.0, 0.0), rule(0.0, 1.0)
    assert rule(0.0, 0.0) == 0.0
    assert c_t == pytest.approx(1.0 - lr * weight_decay, rel=1e-15)
    assert a_t == -lr
    assert rule(p, g) == pytest.approx(c_t * p + a_t * g, rel=1e-12, abs=1e-12 * (abs(p) + abs(g)))


# the scaled epoch's per-example loop (batch 1, distinct features, no L1)
PER_EXAMPLE_CASES = [
    dict(alpha=1e-2),
    dict(alpha=1e-2, schedule=optkern.schedules.InverseScaling(0.1, 0.7),
         optimizer_params={"weight_decay": 0.01}),
    dict(alpha=0.9, lr=1.0, fit_intercept=False),      # W = s V rescaled (s < 1e-9)
]


@pytest.mark.parametrize("kw", PER_EXAMPLE_CASES, ids=range(len(PER_EXAMPLE_CASES)))
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 10_000), dtype=st.sampled_from([np.float32, np.float64]),
       classes=st.sampled_from([2, 3]), weighted=st.booleans(), work=st.sampled_from([0, 60]))
def test_per_example_epoch_is_the_general_batch_loop(kw, seed, dtype, classes, weighted,
                                                    work):
    """Plain SGD at batch 1 on a canonical CSR runs the written loop bound to
    the per-example primitives (no touched list, no compact gradient): the
    weights of the general minibatch loop (the
    same matrix flagged non-canonical, so each step goes through the slot map)
    bit for bit, with sample weights, in blocks, and the NumPy reference."""
    X, y2, y3 = _csr(seed, dtype=dtype)
    y = y2 if classes == 2 else y3
    sw = np.random.default_rng(seed).uniform(0.0, 2.0, X.shape[0]) if weighted else None
    kw = dict(kw, optimizer="sgd", batch_size=1, max_epochs=2, tol=None, random_state=seed,
              sparse_updates="exact", backend="numba")
    messy = X.copy()
    messy.has_canonical_format = False
    with pytest.MonkeyPatch.context() as mp:
        if work:
            mp.setattr(_lin_epochs, "SPARSE_EPOCH_BLOCK_WORK", work)
        got = optkern.LinearClassifier(**kw).fit(X, y, sample_weight=sw)
        general = optkern.LinearClassifier(**kw).fit(messy, y, sample_weight=sw)
    np.testing.assert_array_equal(got.coef_, general.coef_)
    np.testing.assert_array_equal(got.intercept_, general.intercept_)
    np.testing.assert_allclose([h["loss"] for h in got.history_],
                               [h["loss"] for h in general.history_], rtol=1e-12)
    ref = optkern.LinearClassifier(**dict(kw, backend="numpy")).fit(X, y, sample_weight=sw)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(got.coef_, ref.coef_, **tol)


# the slot table (kernels/sparse_epoch_drivers.py) and the lazy penalty's
# 1/pi_f: every layout the glue may choose gives the same steps
SLOT_CASES = [
    ("adagrad", dict(alpha=1e-2), "lazy"),             # lazy penalty (inv_p)
    ("adam", dict(alpha=1e-2, average=True), "lazy"),  # catch-up of the average (collect_rows)
    ("momentum", dict(alpha=1e-2), "exact"),           # the linear mode's tables
    ("sgd", dict(alpha=1e-2, penalty="l1"), "exact"),  # the scaled mode, L1 clip first
    ("sgd", dict(alpha=1e-2), "exact"),                # the scaled mode, fused row pass
]


def _tightest_table(n_features, cap, dtype):
    """The smallest table the epochs accept when hashed: a power of two above
    cap (up to nearly full, many collisions and long probes)."""
    rows = 1 << int(cap).bit_length()
    return np.full((rows, 2), -1, dtype)


@pytest.mark.parametrize("name, kw, mode", SLOT_CASES, ids=[f"{n}-{m}-{j}" for j, (n, _, m)
                                                               in enumerate(SLOT_CASES)])
@pytest.mark.parametrize("twin", [False, True], ids=["numba", "cython-twin"])
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.sampled_from([2, 5]),
       dtype=st.sampled_from([np.float32, np.float64]), classes=st.sampled_from([2, 3]))
def test_slot_table_and_penalty_layouts_give_the_same_steps(name, kw, mode, twin, seed,
                                                            batch, dtype, classes):
    """One row per feature, the default hashed table and the tightest hashed
    table (collisions, probes wrapping round the table's end); the lazy
    penalty's 1/pi_f per feature and per nonzero: the same weights, bit for
    bit, in the Numba epochs and in the Cython twin."""
    from optkern import _jit, sparse_epochs
    if twin and _backend.cython_module("sparse_epochs") is None:
        pytest.skip("the sparse Cython twin is not built")
    X, y2, y3 = _csr(seed, n=60, d=300, density=0.03, dtype=dtype)
    y = y2 if classes == 2 else y3
    kw = dict(kw, optimizer=name, batch_size=batch, max_epochs=2)
    layouts = {
        "one row per feature": (lambda d, cap, dt: np.full((d, 2), -1, dt), 1 << 40),
        "hashed, per nonzero": (sparse_epochs.slot_table, 0),
        "tightest, per feature": (_tightest_table, 1 << 40),
    }
    fits = {}
    old = _jit.set_mode("aot" if twin else "sync")
    try:
        for label, (table, min_bytes) in layouts.items():
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(sparse_epochs, "slot_table", table)
                mp.setattr(sparse_epochs, "PER_NONZERO_MIN_BYTES", min_bytes)
                fits[label] = _fit(X, y, mode, "numba", **kw)
    finally:
        _jit.set_mode(old)
    first = fits["one row per feature"]
    for label, m in fits.items():
        np.testing.assert_array_equal(m.coef_, first.coef_, err_msg=label)
        np.testing.assert_array_equal(m.intercept_, first.intercept_, err_msg=label)
        np.testing.assert_allclose([h["loss"] for h in m.history_],
                                   [h["loss"] for h in first.history_], rtol=1e-6)
    assert np.any(first.coef_ != 0)


def test_slot_table_shapes():
    from optkern.sparse_epochs import slot_table
    # hashed: a power of two, at least twice the cap, below n_features
    for d, cap in ((4096, 912), (2 ** 22, 1088), (10, 3), (1000, 1)):
        t = slot_table(d, cap, np.int32)
        rows = t.shape[0]
        assert t.shape == (rows, 2) and np.all(t == -1) and t.dtype == np.int32
        assert rows < d and rows >= 2 * cap and rows & (rows - 1) == 0
    # else one row per feature
    for d, cap in ((40, 24), (1, 1), (64, 32)):
        assert slot_table(d, cap, np.int64).shape == (d, 2)
