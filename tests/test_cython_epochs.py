"""The ahead-of-time Cython training epoch (kernels/cython/generate_epochs.py).

The Cython epoch must compute what the Numba ``epoch_serial`` computes, in the
same order: float64 fits agree to rounding (in practice bit for bit), float32
to float32 accuracy.  Its C twins of ``prepare``, ``schedule_factor`` and
``step_key`` are checked against the Python/Numba originals directly.
"""

import math

import numpy as np
import pytest
import scipy.sparse as sp

import optkern
from optkern import epochs as _epochs_glue
from optkern.kernels import loss_rules, rules, schedule_rules
from optkern.kernels._helpers import step_key

E = pytest.importorskip("optkern.kernels.cython._epochs")

RULES = list(rules.RULES)
LOSSES = list(loss_rules.LOSS_RULES)
REGRESSION = [n for n, s in loss_rules.LOSS_RULES.items() if s.target == "regression"]

# an estimator name for each update rule: the registry's first, except where
# another name exercises more of the rule (momentum state, decoupled decay)
OPTIMIZER_FOR_RULE = {name: spec.estimator_names[0].name for name, spec in rules.RULES.items()}
OPTIMIZER_FOR_RULE.update(sgd="momentum", adam="adamw")

# (loss, rule, layout, dtype, fit_intercept, average, extra estimator params):
# every loss and every rule at least once; dense and CSR, float32 and float64,
# with and without intercept, averaging on and off spread over the cases
CASES = [
    ("softmax", "adam", "dense", np.float64, True, 2, {}),
    ("multiclass_hinge", "sgd", "csr", np.float64, False, False,
     {"optimizer_params": {"nesterov": True}}),
    ("log", "nadam", "dense", np.float32, True, False, {}),
    ("hinge", "rmsprop", "csr", np.float32, True, 3,
     {"optimizer_params": {"centered": True, "momentum": 0.5}}),
    ("squared_hinge", "radam", "csr", np.float64, True, False, {"penalty": "elasticnet"}),
    ("modified_huber", "adamax", "dense", np.float64, False, 1, {"penalty": "l1"}),
    ("squared", "adagrad", "dense", np.float64, True, 2, {}),
    ("huber", "adadelta", "csr", np.float64, True, False, {}),
    ("epsilon_insensitive", "sgld", "dense", np.float64, True, False, {}),
    ("absolute", "adam", "csr", np.float32, False, 2,
     {"optimizer_params": {"amsgrad": True}}),
    ("softmax", "sgld", "csr", np.float32, True, 2, {}),
    ("log", "ftrl", "csr", np.float64, True, False, {"penalty": "elasticnet"}),
    ("log", "sgd", "dense", np.float64, True, False,
     {"schedule": optkern.schedules.Warmup(optkern.schedules.StepDecay(5, 0.5), 4, 0.1)}),
]


def test_cases_cover_every_loss_and_rule():
    assert {c[0] for c in CASES} == set(LOSSES)
    assert {c[1] for c in CASES} == set(RULES)
    assert set(OPTIMIZER_FOR_RULE) == set(RULES)


def _problem(loss, layout, dtype):
    rng = np.random.default_rng(0)
    n, d = 90, 7
    X = rng.standard_normal((n, d))
    X[rng.random((n, d)) < 0.3] = 0.0  # some sparsity, also in the dense layout
    if loss in REGRESSION:
        y = X @ rng.standard_normal((d, 2)) + 0.1 * rng.standard_normal((n, 2))
    elif loss in ("softmax", "multiclass_hinge") or loss in ("hinge", "modified_huber"):
        y = np.argmax(X[:, :3] + 0.3 * rng.standard_normal((n, 3)), axis=1)  # 3 classes
    else:
        y = (X[:, 0] + X[:, 1] > 0).astype(int)  # binary
    X = X.astype(dtype)
    if layout == "csr":
        X = sp.csr_matrix(X)
    return X, y


@pytest.fixture
def captured_runners(monkeypatch):
    got = []
    real = _epochs_glue.runner_for

    def spy(estimator, ctx):
        run = real(estimator, ctx)
        if run is not None:
            got.append(run)
        return run
    monkeypatch.setattr(_epochs_glue, "runner_for", spy)
    return got


def _fit(loss, rule, layout, dtype, fit_intercept, average, extra, backend):
    X, y = _problem(loss, layout, dtype)
    kw = dict(loss=loss, optimizer=OPTIMIZER_FOR_RULE[rule], max_epochs=3, tol=None,
              random_state=5, batch_size=16, fit_intercept=fit_intercept,
              average=average, backend=backend, **extra)
    if layout == "csr":
        kw["sparse_updates"] = "dense"  # the dense CSR epoch (tests/test_sparse.py: the others)
    cls = optkern.LinearRegressor if loss in REGRESSION else optkern.LinearClassifier
    return cls(**kw).fit(X, y)


@pytest.mark.parametrize("loss, rule, layout, dtype, fit_intercept, average, extra", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{np.dtype(c[3]).name}" for c in CASES])
def test_cython_epoch_trains_the_numba_model(captured_runners, loss, rule, layout, dtype,
                                             fit_intercept, average, extra):
    ref = _fit(loss, rule, layout, dtype, fit_intercept, average, extra, "numba")
    captured_runners.clear()
    got = _fit(loss, rule, layout, dtype, fit_intercept, average, extra, "cython")
    # the fit really ran the Cython epoch, for this very combination
    assert captured_runners
    fn = captured_runners[0].fn
    assert type(fn).__module__ == "optkern.kernels.cython._epochs"
    assert (fn.loss, fn.rule, fn.layout) == (loss, rule, layout)
    assert got.coef_.dtype == dtype and got.intercept_.dtype == dtype
    if dtype == np.float64:
        tol = dict(rtol=1e-10, atol=1e-12)
    else:
        tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.coef_, ref.coef_, **tol)
    np.testing.assert_allclose(got.intercept_, ref.intercept_, **tol)
    assert got.n_iter_ == ref.n_iter_
    np.testing.assert_allclose([h["loss"] for h in got.history_],
                               [h["loss"] for h in ref.history_],
                               rtol=1e-4 if dtype == np.float32 else 1e-10)


def test_noise_is_the_numba_noise_and_follows_the_seed():
    X, y = _problem("softmax", "dense", np.float64)
    kw = dict(optimizer="sgld", max_epochs=3, tol=None, batch_size=8)
    a = optkern.LinearClassifier(backend="cython", random_state=1, **kw).fit(X, y)
    b = optkern.LinearClassifier(backend="numba", random_state=1, **kw).fit(X, y)
    c = optkern.LinearClassifier(backend="cython", random_state=2, **kw).fit(X, y)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-10, atol=1e-12)
    assert not np.allclose(a.coef_, c.coef_)


def test_the_epoch_runs_the_registered_combination():
    for layout in ("dense", "csr"):
        fn = E.epoch_for("softmax", "adam", layout)
        assert fn is E.epoch_for("softmax", "adam", layout)  # cached
        assert "softmax" in repr(fn) and layout in repr(fn)
    with pytest.raises(ValueError, match="unknown loss"):
        E.epoch_for("nope", "adam", "dense")
    with pytest.raises(ValueError, match="unknown update rule"):
        E.epoch_for("log", "nope", "dense")
    with pytest.raises(ValueError, match="layout"):
        E.epoch_for("log", "adam", "csc")
    with pytest.raises(TypeError, match="arguments"):
        E.epoch_for("log", "adam", "dense")(1, 2, 3)


def test_divergent_batch_stops_the_epoch_with_nan():
    # lr huge: the loss blows up; the epoch must return NaN, keep the weights of
    # the last good step and report how many steps it took
    X, y = _problem("squared", "dense", np.float64)
    model = optkern.LinearRegressor(loss="squared", optimizer="sgd", lr=1e6, max_epochs=5,
                                    tol=None, batch_size=8, random_state=0)
    for backend in ("numba", "cython"):
        with pytest.raises(Exception) as info:
            model.set_params(backend=backend).fit(X, y)
        assert "lr" in str(info.value) or "learning rate" in str(info.value)


# ---- the C twins of the host functions -------------------------------------------


def _user_values(spec):
    vals = {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01,
            "nesterov": 1.0, "maximize": 0.0, "noise": 1.0, "noise_scale": 0.3,
            "lr_decay": 0.01, "eps": 1e-8, "alpha": 0.99, "centered": 1.0, "rho": 0.9,
            "beta1": 0.9, "beta2": 0.999, "amsgrad": 1.0, "bias_correction": 1.0,
            "decoupled": 1.0, "momentum_decay": 0.004, "lr_power": -0.5, "beta": 1.0,
            "l1": 0.01, "l2": 0.1, "l1_per_step": 1e-4, "l2_per_step": 1e-3}
    return [vals[name] for name in spec.user_hyper]


@pytest.mark.parametrize("rule", RULES)
def test_prepare_twin_equals_the_compiled_prepare(rule):
    numba = pytest.importorskip("numba")
    spec = rules.RULES[rule]
    jit = numba.njit(spec.prepare)
    user = _user_values(spec)
    scalars = tuple(v for _, v in spec.scalar_states)
    cs = scalars
    for step in (1, 2, 3, 7, 50, 1000, 12345):
        lr = user[0] * (1.0 + 0.1 * step)
        py_h, py_s = spec.prepare(step, cs, lr, *user[1:])
        want_h, scalars = jit(step, scalars, lr, *user[1:])
        got_h, cs = E.prepare(rule, step, cs, lr, user[1:])
        # Numba's float ** int is binary exponentiation; the twin follows it
        assert got_h == tuple(float(v) for v in want_h), (rule, step)
        assert cs == tuple(float(v) for v in scalars)
        np.testing.assert_allclose(got_h, py_h, rtol=1e-12)
        np.testing.assert_allclose(cs, py_s, rtol=1e-12)


@pytest.mark.parametrize("kind, a, b, c, warmup, start", [
    (schedule_rules.CONSTANT, 0.0, 0.0, 0.0, 0.0, 1.0),
    (schedule_rules.INVERSE_SCALING, 0.1, 0.75, 0.0, 0.0, 1.0),
    (schedule_rules.STEP, 0.5, 7.0, 0.0, 5.0, 0.1),
    (schedule_rules.EXPONENTIAL, 0.97, 0.0, 0.0, 3.0, 0.0),
    (schedule_rules.COSINE, 0.0, 40.0, 0.05, 0.0, 1.0),
])
def test_schedule_twin_equals_the_compiled_schedule(kind, a, b, c, warmup, start):
    numba = pytest.importorskip("numba")
    jit = numba.njit(schedule_rules.schedule_factor)
    for t in range(0, 120, 3):
        want = jit(float(kind), float(t), a, b, c, warmup, start)
        assert E.schedule_factor(kind, t, a, b, c, warmup, start) == want
        assert math.isclose(want, schedule_rules.schedule_factor(kind, t, a, b, c, warmup,
                                                                 start), rel_tol=1e-12)


def test_step_key_twin_is_bit_exact():
    for seed in (0, 1, 7, 2**32 + 3, 2**63 + 12345, 2**64 - 1):
        for step in (0, 1, 2, 1000, 2**40):
            assert E.step_key(seed, step) == step_key(seed, step)
            assert isinstance(E.step_key(seed, step), np.uint64)


def test_generated_source_is_current():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "kernels", "cython", "generate_epochs.py")
    spec = importlib.util.spec_from_file_location("_gen_epochs_test", path)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert E.SOURCE_HASH == gen.source_hash(), "rebuild: pip install -e . --no-build-isolation"


def test_partial_fit_bookkeeping_matches_numba():
    # step counts, Polyak counts and NAdam's mu_product carried across calls
    X, y = _problem("softmax", "dense", np.float64)
    models = {}
    for backend in ("numba", "cython"):
        m = optkern.LinearClassifier(optimizer="nadam", batch_size=8, sampling="sequential",
                                     average=3, random_state=0, backend=backend, tol=None)
        for start in range(0, 90, 30):
            m.partial_fit(X[start:start + 30], y[start:start + 30], classes=np.unique(y))
        models[backend] = m
    np.testing.assert_allclose(models["cython"].coef_, models["numba"].coef_,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(models["cython"].intercept_, models["numba"].intercept_,
                               rtol=1e-10, atol=1e-12)


# ---- the dense pass's blocks, tiles and vector widths (issue 18) ---------------------
# The dense Cython epoch runs blocks of DENSE_ROWS (48) rows, score tiles of 6 rows x 2
# outputs, dW^T tiles of 6 rows x 4 outputs, partial sums as wide as the CPU's vectors
# over the features, the softmax in its lane form and the other losses row by row:
# rows, outputs and features that are not multiples of those, sample weights, both
# dtypes, every vector width the CPU offers.

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _dense_fit(backend, X, y, sw, loss, batch, intercept):
    cls = optkern.LinearRegressor if loss in REGRESSION else optkern.LinearClassifier
    # The backends agree to rounding, not bit for bit (one Adam step differs by
    # an ulp or two between the Cython and Numba epochs).  Adam's first step
    # is lr * sign(g) in every weight, so with few features whole groups of
    # classes get the same weights up to those last bits, and the multiclass
    # hinge's choice of the best wrong class among them -- a discontinuous
    # function of the scores -- then follows the last bits: hypothesis found
    # n = 20, d = 1, k = 10, where the two backends' second epochs moved
    # different classes.  SGD's steps are proportional to the gradient, so
    # the non-smooth loss trains with SGD here (the epochs under test are the
    # same code whatever the update).
    optimizer = "sgd" if loss == "multiclass_hinge" else "adam"
    model = cls(loss=loss, optimizer=optimizer, lr=0.05, max_epochs=2, tol=None,
                random_state=3, batch_size=batch, fit_intercept=intercept, backend=backend)
    return model.fit(X, y, sample_weight=sw)


def _dense_problem(seed, n, d, k, loss, dtype, weighted):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if loss in REGRESSION:
        y = X @ rng.standard_normal((d, k)) + 0.1 * rng.standard_normal((n, k))
    else:
        y = np.argmax(X[:, :1] @ rng.standard_normal((1, k))
                      + rng.standard_normal((n, k)), axis=1)
        y[:k] = np.arange(k)  # every class present
    sw = rng.uniform(0.2, 2.0, n).astype(dtype) if weighted else None
    return X.astype(dtype), y, sw


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(20, 160), d=st.integers(1, 41),
       k=st.integers(2, 11), batch=st.sampled_from([7, 32, 48, 50, 97, 200]),
       loss=st.sampled_from(["softmax", "softmax", "multiclass_hinge", "squared"]),
       dtype=st.sampled_from([np.float32, np.float64]), weighted=st.booleans(),
       intercept=st.booleans())
@example(seed=8, n=121, d=33, k=8, batch=200, loss="softmax", dtype=np.float32,
         weighted=False, intercept=False)      # (CI's draw: an amplified ulp, below)
def test_dense_blocks_and_tiles_train_the_numba_model(seed, n, d, k, batch, loss, dtype,
                                                      weighted, intercept):
    X, y, sw = _dense_problem(seed, n, d, k, loss, dtype, weighted)
    ref = _dense_fit("numba", X, y, sw, loss, batch, intercept)
    got = _dense_fit("cython", X, y, sw, loss, batch, intercept)
    if dtype == np.float64:
        np.testing.assert_allclose(got.coef_, ref.coef_, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(got.intercept_, ref.intercept_, rtol=1e-9, atol=1e-11)
    else:
        # float32: to rounding, plus what float32 rounding itself does to this
        # weight -- the Numba model's distance from the same fit in float64.
        # Adam's normalised step can amplify an ulp of the gradient: CI drew
        # seed=8, n=121, d=33, k=8, batch 200, softmax, where one weight is
        # -0.005844 (numba) and -0.005938 (cython) in float32 and -0.006058 in
        # float64 (NumPy backend, float32: -0.006052)
        ref64 = _dense_fit("numba", X.astype(np.float64), y,
                           None if sw is None else sw.astype(np.float64), loss, batch, intercept)
        for a, b, c in ((got.coef_, ref.coef_, ref64.coef_),
                        (got.intercept_, ref.intercept_, ref64.intercept_)):
            noise = np.abs(np.asarray(b, np.float64) - c)
            np.testing.assert_array_less(np.abs(np.asarray(a, np.float64) - b),
                                         2e-5 + 2e-4 * np.abs(b) + 4 * noise + 1e-12)
    np.testing.assert_allclose([h["loss"] for h in got.history_],
                               [h["loss"] for h in ref.history_],
                               rtol=1e-9 if dtype == np.float64 else 2e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["softmax", "squared"])
def test_every_vector_width_trains_the_same_model(loss, dtype):
    # the dense pass's C kernels are compiled for AVX-512, AVX2+FMA and the build's own
    # ISA; whichever runs, the model is the same up to rounding (the features' partial
    # sums are as wide as the vectors, and only the wider ones contract into FMAs)
    default = E.set_simd_level(-1)
    assert E.simd_level() == default and default in (0, 1)
    best = E.set_simd_level(99)           # capped at what the CPU has
    assert best in (0, 1, 2) and best >= default
    X, y, sw = _dense_problem(11, 131, 37, 5, loss, dtype, True)
    try:
        models = []
        for level in range(best + 1):
            assert E.set_simd_level(level) == level
            models.append(_dense_fit("cython", X, y, sw, loss, 48, True))
    finally:
        E.set_simd_level(-1)
    ref = _dense_fit("numba", X, y, sw, loss, 48, True)
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    for m in models:
        np.testing.assert_allclose(m.coef_, ref.coef_, **tol)
        np.testing.assert_allclose(m.intercept_, ref.intercept_, **tol)


# ---- scores with vectors across the outputs (issue 18, ninth round) ------------------
# For 3-4 <= k <= 16 the dense pass computes the scores with W padded to whole vectors
# of outputs (one multiply-add per row, feature and vector; up to 8 rows at once);
# each output's sum runs over the features in order.  Checked against NumPy and, at
# the baseline ISA (no FMA contraction), bit for bit against that order; both score
# kernels and every vector width train the Numba model.


def _scores_reference_in_order(X, order, W, b):
    dt = X.dtype.type
    Z = np.empty((W.shape[1], order.shape[0]), X.dtype)
    for q, i in enumerate(order):
        for j in range(W.shape[1]):
            s = dt(0)
            for f in range(X.shape[1]):
                s = dt(s + dt(X[i, f] * W[f, j]))
            Z[j, q] = dt(s + b[j])
    return Z


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), m=st.integers(1, 48), d=st.integers(1, 23),
       k=st.integers(2, 18), dtype=st.sampled_from([np.float32, np.float64]),
       across=st.booleans())
def test_score_kernels_compute_the_numpy_scores(seed, m, d, k, dtype, across):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m + 7, d)).astype(dtype)
    order = rng.permutation(m + 7)[:m].astype(np.int64)
    W = rng.standard_normal((d, k)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    want = (X[order].astype(np.float64) @ W.astype(np.float64) + b).T
    old = E.set_scores_across(across)
    best = E.set_simd_level(99)
    try:
        for level in range(best + 1):
            assert E.set_simd_level(level) == level
            got = E.scores_pass(X, order, W, b, m)[:, :m]
            tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else \
                dict(rtol=1e-5, atol=1e-5 * np.sqrt(d))
            np.testing.assert_allclose(got, want, **tol)
            if across and level == 0:
                # no FMA at the baseline ISA: the features' sum in order, bit for bit
                # (where k has an across-outputs kernel; else the dot tiles agree to
                # rounding above)
                inorder = _scores_reference_in_order(X, order, W, b)
                if (dtype == np.float32 and 4 <= k <= 16) or \
                        (dtype == np.float64 and 3 <= k <= 8):
                    np.testing.assert_array_equal(got, inorder)
    finally:
        E.set_simd_level(-1)
        E.set_scores_across(old)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(20, 130), d=st.integers(1, 33),
       k=st.integers(3, 17), batch=st.sampled_from([7, 32, 48, 97]),
       dtype=st.sampled_from([np.float32, np.float64]), weighted=st.booleans())
def test_both_score_kernels_train_the_numba_model(seed, n, d, k, batch, dtype, weighted):
    X, y, sw = _dense_problem(seed, n, d, k, "softmax", dtype, weighted)
    ref = _dense_fit("numba", X, y, sw, "softmax", batch, True)
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    best = E.set_simd_level(99)
    old = E.scores_across()
    try:
        for across in (True, False):
            E.set_scores_across(across)
            for level in range(best + 1):
                E.set_simd_level(level)
                got = _dense_fit("cython", X, y, sw, "softmax", batch, True)
                np.testing.assert_allclose(got.coef_, ref.coef_, **tol)
                np.testing.assert_allclose(got.intercept_, ref.intercept_, **tol)
    finally:
        E.set_simd_level(-1)
        E.set_scores_across(old)
    assert E.scores_across() is True


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_auto_runs_the_cython_epoch_where_it_measured_faster(dtype):
    # backend="auto", serial dense epoch: the Cython twin for the whole fit at small d
    # and k (_backend.cython_dense_epoch_pays), the Numba epoch elsewhere (its kernel
    # compiled: the "sync" mode of the compile server); one kernel per fit
    from optkern import _backend, _jit

    def fit(backend, X, y, batch):
        return optkern.LinearClassifier(optimizer="adam", max_epochs=2, tol=None,
                                         batch_size=batch, random_state=5,
                                         backend=backend).fit(X, y)

    old = _jit.set_mode("sync")
    try:
        for busy in (False, True):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(_backend, "machine_busy", lambda load=None, cores=None: busy)
                for d, k, batch in ((20, 5, 32), (64, 8, 256), (65, 5, 32), (12, 3, 4097),
                                    (20, 11, 32), (20, 9, 64), (100, 8, 256), (65, 2, 96)):
                    X, y, _ = _dense_problem(d + k, 200 + batch, d, k, "softmax", dtype, False)
                    pays = _backend.cython_dense_epoch_pays(d, k, batch, dtype)
                    one_thread = (d <= 64 and batch <= 4096
                                  and k <= (10 if dtype == np.float32 else 8))
                    # a helper thread: more than 48 rows, enough work, a core to spare
                    threads = (batch > 48 and batch * (d * k + 64) >= 32_768 and not busy)
                    assert pays == (one_thread or threads), (d, k, batch, busy)
                    auto = fit("auto", X, y, batch)
                    want = fit("cython" if pays else "numba", X, y, batch)
                    np.testing.assert_array_equal(auto.coef_, want.coef_)
                    np.testing.assert_array_equal(auto.intercept_, want.intercept_)
        # with the dot-product score tiles the twin is not preferred
        was = E.set_scores_across(False)
        try:
            assert not _backend.cython_dense_epoch_pays(20, 5, 32, dtype)
            assert not _backend.cython_dense_epoch_pays(100, 8, 256, dtype, load=0.0, cores=2)
        finally:
            E.set_scores_across(was)
    finally:
        _jit.set_mode(old)


# ---- the dense epoch's helper thread ------------------------------------------


def _fit_threads(threads, X, y, sw, loss, rule, batch, intercept, average):
    from optkern import _backend

    cls = optkern.LinearRegressor if loss in REGRESSION else optkern.LinearClassifier
    model = cls(loss=loss, optimizer=OPTIMIZER_FOR_RULE[rule], lr=0.05, max_epochs=2,
                tol=None, random_state=3, batch_size=batch, fit_intercept=intercept,
                average=average, backend="cython")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_backend, "cython_epoch_threads", lambda *a, **k: threads)
        return model.fit(X, y, sample_weight=sw)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(20, 400), d=st.integers(1, 41),
       k=st.integers(2, 11), batch=st.sampled_from([7, 48, 49, 50, 97, 200, 256]),
       loss=st.sampled_from(["softmax", "multiclass_hinge", "squared", "log", "huber"]),
       rule=st.sampled_from(["adam", "sgd", "sgld", "rmsprop"]),
       dtype=st.sampled_from([np.float32, np.float64]), weighted=st.booleans(),
       intercept=st.booleans(), average=st.sampled_from([False, 2]))
def test_helper_thread_trains_the_one_thread_model_bit_for_bit(
        seed, n, d, k, batch, loss, rule, dtype, weighted, intercept, average):
    # n_chunks = 2: a helper thread runs the second half of every minibatch of
    # more than 48 rows; the halves are summed the same way on one thread, so
    # the weights, the optimizer's trajectory and the losses are the same bits
    if loss in ("log", "huber"):
        k = 1 if loss == "log" else k
    X, y, sw = _dense_problem(seed, n, d, max(k, 2), loss, dtype, weighted)
    if loss == "log":
        y = (y > 0).astype(int)
    one = _fit_threads(1, X, y, sw, loss, rule, batch, intercept, average)
    was = E.helper_stats()
    two = _fit_threads(2, X, y, sw, loss, rule, batch, intercept, average)
    now = E.helper_stats()
    # every minibatch of more than 48 rows ran its second half on the helper
    # or, where the helper had not reached it, on the epoch's thread
    sizes = [min(batch, n - s) for s in range(0, n, batch)]
    pairs = 2 * sum(m > 48 for m in sizes)
    ran = now["helper"] + now["caller"] - was["helper"] - was["caller"]
    assert ran == pairs or (ran < pairs and now["stopped"] > was["stopped"])
    np.testing.assert_array_equal(two.coef_, one.coef_)
    np.testing.assert_array_equal(two.intercept_, one.intercept_)
    assert [h["loss"] for h in two.history_] == [h["loss"] for h in one.history_]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_helper_thread_epoch_trains_the_numba_model(dtype):
    # the two-half sums against the Numba epoch's one running sum: to rounding
    X, y, _ = _dense_problem(11, 3000, 30, 6, "softmax", dtype, False)
    got = _fit_threads(2, X, y, None, "softmax", "adam", 256, True, False)
    ref = _dense_fit("numba", X, y, None, "softmax", 256, True)
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(got.coef_, ref.coef_, **tol)
    np.testing.assert_allclose(got.intercept_, ref.intercept_, **tol)


def test_helper_thread_stops_with_a_diverging_epoch(monkeypatch):
    # a NaN loss mid-epoch leaves through the epoch's one exit, which joins the
    # helper: the epoch returns NaN after the same steps, with the same
    # weights of its last good step, on one thread or two
    from optkern import _backend

    X, y, _ = _dense_problem(2, 2000, 9, 3, "squared", np.float64, False)
    got = {}
    for threads in (1, 2):
        calls = []

        class Spy(E.Epoch):
            def __call__(self, *args):
                out = super().__call__(*args)
                calls.append((args[5], out[0], out[1], args[6].copy()))
                return out

        monkeypatch.setattr(_backend, "cython_epoch_threads", lambda *a, t=threads, **k: t)
        monkeypatch.setattr(E, "epoch_for", lambda loss, rule, layout: Spy(loss, rule, layout))
        model = optkern.LinearRegressor(loss="squared", optimizer="sgd", lr=1e20, max_epochs=5,
                                        tol=None, batch_size=100, random_state=0,
                                        backend="cython", on_divergence="warn")
        with pytest.warns(RuntimeWarning, match="diverged"):
            model.fit(X, y)
        n_chunks, mean, steps, W = calls[-1]
        assert n_chunks == threads and math.isnan(mean) and 0 < steps < 20
        got[threads] = (steps, W)
    assert got[1][0] == got[2][0]
    np.testing.assert_array_equal(got[1][1], got[2][1])


def test_epoch_threads_rule():
    from optkern import _backend as B

    quiet = dict(load=0.0, cores=2)
    assert B.cython_epoch_threads(64, 8, 256, **quiet) == 2
    assert B.cython_epoch_threads(64, 8, 48, **quiet) == 1          # one block: not split
    assert B.cython_epoch_threads(32, 10, 64, **quiet) == 1         # 24,576 < 32,768
    assert B.cython_epoch_threads(64, 8, 64, **quiet) == 2          # 36,864
    assert B.cython_epoch_threads(64, 8, 256, load=1.8, cores=2) == 1   # busy
    assert B.cython_epoch_threads(64, 8, 256, load=0.0, cores=1) == 1   # one core


def test_a_slow_helper_leaves_the_epoch_on_one_thread():
    # a helper that keeps the epoch waiting (here: delayed 3 ms before every
    # part it claims, as a busy machine's scheduler would) is stopped at its
    # second slow wait in an epoch; the epoch goes on with one thread, the
    # fit's next epoch asks for none, and the model is the one-thread model
    # bit for bit.  A new helper thread may not be scheduled at all while a
    # busy test machine runs a short fit: up to five fits, until one stops it.
    X, y, _ = _dense_problem(4, 60000, 24, 5, "softmax", np.float64, False)
    one = _fit_threads(1, X, y, None, "softmax", "adam", 200, True, False)
    for _ in range(5):
        was = E.helper_stats()
        old = E.set_helper_delay(3e-3)
        try:
            two = _fit_threads(2, X, y, None, "softmax", "adam", 200, True, False)
        finally:
            E.set_helper_delay(old)
        now = E.helper_stats()
        np.testing.assert_array_equal(two.coef_, one.coef_)
        np.testing.assert_array_equal(two.intercept_, one.intercept_)
        stops, parts = now["stopped"] - was["stopped"], now["helper"] - was["helper"]
        # two epochs: a stop in one skips the other; each claimed part is a
        # slow wait, so at most 3 parts (2 in the stopped epoch, 1 in the
        # other); on a busy machine a helper starved of its core is stopped
        # for the parts it misses instead
        assert stops <= 1 and parts <= 3, (stops, parts)
        if stops:
            break
    assert stops == 1


def test_the_helper_thread_runs_second_halves():
    # the helper does reach second halves when it gets a core: minibatches of
    # 4096 rows (about a millisecond a half), a few fits, as the test machine
    # may be busy with other tests; every split minibatch is run once, by the
    # helper or by the epoch's thread
    X, y, _ = _dense_problem(6, 40960, 128, 8, "softmax", np.float32, False)
    pairs = 2 * 10   # 2 epochs of 10 minibatches
    for _ in range(5):
        was = E.helper_stats()
        _fit_threads(2, X, y, None, "softmax", "adam", 4096, True, False)
        now = E.helper_stats()
        ran = now["helper"] + now["caller"] - was["helper"] - was["caller"]
        assert ran == pairs or (ran < pairs and now["stopped"] > was["stopped"])
        if now["helper"] > was["helper"]:
            break
    assert now["helper"] > was["helper"]


def test_dense_fits_without_the_cython_extension(monkeypatch):
    # a machine without a C compiler has no _epochs module: dense fits run the
    # Numba epoch ("numba" and "auto"), the helper-thread branch untouched
    from optkern import _backend

    X, y, _ = _dense_problem(9, 600, 12, 4, "softmax", np.float64, False)
    ref = _dense_fit("numba", X, y, None, "softmax", 100, True)
    real = _backend.cython_module
    monkeypatch.setattr(_backend, "cython_module",
                        lambda kind="updates": None if kind == "epochs" else real(kind))
    for backend in ("numba", "auto"):
        got = _dense_fit(backend, X, y, None, "softmax", 100, True)
        np.testing.assert_array_equal(got.coef_, ref.coef_)
        np.testing.assert_array_equal(got.intercept_, ref.intercept_)
