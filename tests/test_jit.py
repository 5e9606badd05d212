"""The JIT service (optkern._jit): results never depend on which kernel served.

backend="auto" calls are served by the Cython twin while the Numba kernel is
not compiled and by Numba afterwards.  Here each path is forced ("aot": the
twin; "sync": Numba) and the two are compared with each other and with the
NumPy reference, for the loss kernels (every loss, dense and CSR, fused and
BLAS, float32 and float64), predict_scores, every optimizer's step, and the
estimators' compiled epochs (dense, CSR, the sparse epochs' NumPy reference,
L-BFGS on CSR).  The compile server is tested in fresh processes with an
empty cache: the first call is served by the twin and the next by Numba; a
server killed mid-compile leaves a cache that a new process uses; two servers
compiling the same kernel at once leave a usable entry.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings, strategies as st

import optkern
from optkern import _backend, _jit
from optkern.losses import LOSSES

pytestmark = pytest.mark.skipif(
    _backend.cython_module("losses") is None or _backend.cython_module() is None
    or _backend.cython_module("epochs") is None,
    reason="the Cython twins are not built")


@pytest.fixture
def served(monkeypatch):
    """run(mode, fn): fn() with the service forced to ``mode``; returns
    (result, calls the twin served, calls Numba served).  "auto" sends even
    small problems to Numba here (as it does from CYTHON_MAX_SIZE elements),
    so that the small test problems exercise the served path; nor does it keep
    their dense epochs on the Cython twin (_backend.cython_dense_epoch_pays),
    so that "sync" runs Numba's."""
    monkeypatch.setattr(_backend, "CYTHON_MAX_SIZE", 0)
    monkeypatch.setattr(_backend, "CYTHON_DENSE_EPOCH_MAX_D", -1)

    def run(mode, fn):
        old = _jit.set_mode(mode)
        _jit.forget()
        before = _jit.stats()
        try:
            out = fn()
        finally:
            _jit.set_mode(old)
            _jit.forget()
        after = _jit.stats()
        return out, after["twin"] - before["twin"], after["numba"] - before["numba"]
    return run


def _tol(dtype):
    return dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-11)


def _loss_problem(loss, n, d, k, dtype, rng, csr):
    spec = LOSSES[loss]
    if spec.target == "binary":
        k = 1
        y = rng.integers(0, 2, n)
    elif spec.target == "multiclass":
        k = max(k, 2)
        y = rng.integers(0, k, n)
    else:
        y = rng.standard_normal((n, k)).astype(dtype)
    X = rng.standard_normal((n, d)).astype(dtype)
    if csr:
        X[rng.random((n, d)) < 0.7] = 0
        X = sp.csr_matrix(X)
    W = (0.3 * rng.standard_normal((d, k))).astype(dtype)
    b = (0.1 * rng.standard_normal(k)).astype(dtype)
    return X, y, W, b


# the fixture only patches a threshold and restores the mode per call: safe
# to share between examples
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(loss=st.sampled_from(sorted(LOSSES)), csr=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, 40),
       d=st.integers(1, 30), k=st.sampled_from([1, 3, 20]),
       weighted=st.booleans(), alpha=st.sampled_from([0.0, 1e-2]),
       penalty=st.sampled_from(["l2", "l1", "elasticnet"]), seed=st.integers(0, 2 ** 16))
def test_loss_and_grad_same_whichever_kernel_serves(served, loss, csr, dtype, n, d, k,
                                                    weighted, alpha, penalty, seed):
    rng = np.random.default_rng(seed)
    X, y, W, b = _loss_problem(loss, n, d, k, dtype, rng, csr)
    sw = rng.random(n).astype(dtype) + 0.1 if weighted else None
    kw = dict(loss=loss, alpha=alpha, penalty=penalty, sample_weight=sw)
    twin, n_twin, _ = served("aot", lambda: optkern.loss_and_grad(X, y, W, b, **kw))
    numba, _, n_numba = served("sync", lambda: optkern.loss_and_grad(X, y, W, b, **kw))
    ref = optkern.loss_and_grad(X, y, W, b, backend="numpy", **kw)
    assert n_twin > 0 and n_numba > 0        # each path really ran
    tol = _tol(dtype)
    for got in (twin, numba):
        assert got[1].dtype == dtype
        np.testing.assert_allclose(got[0], ref[0], **tol)
        np.testing.assert_allclose(got[1], ref[1], **tol)
        np.testing.assert_allclose(got[2], ref[2], **tol)
    np.testing.assert_allclose(twin[1], numba[1], **tol)


@pytest.mark.parametrize("csr", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_scores_same_whichever_kernel_serves(served, csr, dtype):
    rng = np.random.default_rng(3)
    X, _, W, b = _loss_problem("squared", 50, 17, 4, dtype, rng, csr)
    twin, n_twin, _ = served("aot", lambda: optkern.predict_scores(X, W, b))
    numba, _, n_numba = served("sync", lambda: optkern.predict_scores(X, W, b))
    ref = optkern.predict_scores(X, W, b, backend="numpy")
    assert n_twin > 0 and n_numba > 0
    np.testing.assert_allclose(twin, ref, **_tol(dtype))
    np.testing.assert_allclose(numba, ref, **_tol(dtype))


OPTIMIZERS = [(optkern.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
              (optkern.SGD, dict(lr=0.1, noise=0.01, seed=3)),
              (optkern.Adagrad, {}), (optkern.RMSprop, dict(centered=True, momentum=0.5)),
              (optkern.Adadelta, {}), (optkern.Adam, dict(amsgrad=True)),
              (optkern.AdamW, {}), (optkern.Adamax, {}), (optkern.NAdam, {}),
              (optkern.RAdam, {}), (optkern.SGLD, dict(lr=1e-3, seed=1)),
              (optkern.FTRL, dict(l1=0.01))]


@pytest.mark.parametrize("cls, kw", OPTIMIZERS, ids=[c.__name__ + str(i)
                                                     for i, (c, _) in enumerate(OPTIMIZERS)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [100, 3000])
def test_optimizer_step_same_whichever_kernel_serves(served, cls, kw, dtype, size):
    rng = np.random.default_rng(size)
    p0 = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(6)]

    def run():
        p = p0.copy()
        opt = cls([p], average=2, **kw)
        for g in grads:
            opt.step([g])
        return p, opt.averaged_params()[0], opt.state_dict()

    (pt, at, st_t), n_twin, _ = served("aot", run)
    (pn, an, st_n), _, _ = served("sync", run)
    assert n_twin > 0
    np.testing.assert_allclose(pt, pn, **_tol(dtype))
    np.testing.assert_allclose(at, an, **_tol(dtype))
    for key, value in st_n["state"][0].items():
        np.testing.assert_allclose(np.asarray(st_t["state"][0][key], dtype=np.float64),
                                   np.asarray(value, dtype=np.float64), **_tol(dtype))


def test_check_finite_raises_on_either_path(served):
    p = np.zeros(20_000, np.float32)
    g = np.zeros(20_000, np.float32)
    g[123] = np.nan
    for mode in ("aot", "sync"):
        opt = optkern.Adam([p])

        def step(opt=opt):
            with pytest.raises(FloatingPointError, match=r"grads\[0\]"):
                opt.step([g])
        served(mode, step)
        assert not p.any()


def test_loss_and_grad_nan_raises_before_out_on_either_path(served):
    rng = np.random.default_rng(0)
    X, y, W, b = _loss_problem("softmax", 30, 5, 3, np.float32, rng, False)
    X[4, 2] = np.inf
    out = (np.full_like(W, 7), np.full_like(b, 7))
    for mode in ("aot", "sync"):
        def call():
            with pytest.raises(ValueError, match="X contains NaN"):
                optkern.loss_and_grad(X, y, W, b, out=out)
        served(mode, call)
        assert (out[0] == 7).all() and (out[1] == 7).all()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(loss=st.sampled_from(sorted(LOSSES)), csr=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), k=st.sampled_from([1, 3, 20]),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), zero_w=st.booleans(),
       zero_weight_row=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_non_finite_X_raises_before_out_on_either_path(served, loss, csr, dtype, k, bad,
                                                       zero_w, zero_weight_row, seed):
    # the default call finds a NaN/inf in X through the kernel's own result
    # (optkern.losses.loss_and_grad): wherever it sits, even with W = 0, in a
    # row of zero weight, or with a loss whose derivative is 0 there
    rng = np.random.default_rng(seed)
    n, d = 37, 11
    X, y, W, b = _loss_problem(loss, n, d, k, dtype, rng, False)
    i, j = rng.integers(0, n), rng.integers(0, d)
    X[i, j] = bad
    if zero_w:
        W[...] = 0
    sw = np.ones(n, dtype)
    if zero_weight_row:
        sw[i] = 0
    if csr:
        X = sp.csr_matrix(X)
    out = (np.full_like(W, 7), np.full_like(b, 7))
    for mode in ("aot", "sync"):
        for method in ("auto", "blas") if not csr else ("auto",):
            def call():
                with pytest.raises(ValueError, match="X contains NaN"):
                    optkern.loss_and_grad(X, y, W, b, loss=loss, sample_weight=sw, out=out,
                                          method=method)
            served(mode, call)
            assert (out[0] == 7).all() and (out[1] == 7).all()



@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=30)
@given(loss=st.sampled_from(sorted(LOSSES)), dtype=st.sampled_from([np.float32, np.float64]),
       k=st.sampled_from([1, 3, 20]), where=st.sampled_from(["W", "b"]),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), seed=st.integers(0, 2 ** 16))
def test_non_finite_W_or_b_raises_before_out_on_the_blas_path(served, loss, dtype, k, where,
                                                               bad, seed):
    # the dense BLAS path checks W and b through the scores X W + b of its
    # row pass (no scan of W first): a NaN/inf anywhere in W or b, even where
    # its column's scores get derivative 0, raises before out is written
    rng = np.random.default_rng(seed)
    n, d = 23, 9
    X, y, W, b = _loss_problem(loss, n, d, k, dtype, rng, False)
    target = W if where == "W" else b
    target.flat[rng.integers(0, target.size)] = bad
    out = (np.full_like(W, 7), np.full_like(b, 7))
    for mode in ("aot", "sync"):
        def call():
            with pytest.raises(ValueError, match="W or b contains NaN"):
                optkern.loss_and_grad(X, y, W, b, loss=loss, out=out, method="blas")
        served(mode, call)
        assert (out[0] == 7).all() and (out[1] == 7).all()

FITS = [
    ("softmax", "adam", "dense", np.float32, {}),
    ("hinge", "sgd", "dense", np.float64, {}),
    ("log", "rmsprop", "csr", np.float32, {"sparse_updates": "dense"}),
    ("softmax", "rmsprop", "csr", np.float64, {}),          # the sparse (lazy) epoch
    ("squared_hinge", "sgd", "csr", np.float64, {}),        # the sparse "scaled" epoch
    ("huber", "adagrad", "dense", np.float32, {}),
    ("softmax", "adam", "dense", np.float64, {"solver": "lbfgs"}),
    ("log", "adam", "csr", np.float64, {"solver": "lbfgs"}),
]


@pytest.mark.parametrize("loss, optimizer, layout, dtype, extra", FITS,
                         ids=[f"{f[0]}-{f[1]}-{f[2]}-{np.dtype(f[3]).name}-{len(f[4])}"
                              for f in FITS])
def test_fit_same_whichever_kernel_serves(served, loss, optimizer, layout, dtype, extra):
    rng = np.random.default_rng(11)
    n, d = 120, 12
    X = rng.standard_normal((n, d)).astype(dtype)
    if layout == "csr":
        X[rng.random((n, d)) < 0.6] = 0
        X = sp.csr_matrix(X)
    regression = LOSSES[loss].target == "regression"
    if regression:
        y = rng.standard_normal(n)
        cls = optkern.LinearRegressor
    else:
        y = rng.integers(0, 3 if loss in ("softmax", "multiclass_hinge") else 2, n)
        cls = optkern.LinearClassifier

    def fit():
        return cls(loss=loss, optimizer=optimizer, max_epochs=4, tol=None, random_state=2,
                   batch_size=16, **extra).fit(X, y)

    twin, n_twin, _ = served("aot", fit)
    numba, _, _ = served("sync", fit)
    if extra.get("solver") != "lbfgs":
        assert n_twin > 0        # the Cython epoch (dense, CSR, or the sparse epochs')
    tol = _tol(dtype) if extra.get("solver") != "lbfgs" else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(twin.coef_, numba.coef_, **tol)
    np.testing.assert_allclose(twin.intercept_, numba.intercept_, **tol)
    assert twin.n_iter_ == numba.n_iter_


# ------------------------------------------- the sparse epochs' Cython twin

# (loss, optimizer, estimator arguments): every kind of sparse epoch and every
# branch of its loop -- lazy with the penalty's 1/pi_f (Adam), lazy without a
# penalty on several outputs (RMSprop), linear with catch-up tables and the
# dense first step (SGD + momentum), linear with the averaging tables
# (Adagrad), scaled with the cumulative L1 (plain SGD, elastic net), lazy with
# averaging on a regression
SPARSE_FITS = [
    ("log", "adam", {"alpha": 1e-2}),
    ("softmax", "rmsprop", {"alpha": 0.0, "sparse_updates": "lazy"}),
    ("softmax", "sgd", {"optimizer_params": {"momentum": 0.9}, "alpha": 1e-3}),
    ("log", "adagrad", {"alpha": 0.0, "average": 3}),
    ("squared_hinge", "sgd", {"penalty": "elasticnet", "alpha": 1e-2, "l1_ratio": 0.5}),
    ("squared", "adam", {"average": True}),
]


def _sparse_problem(rng, n, d, density, dtype, idx64, n_classes):
    dense = rng.standard_normal((n, d)).astype(dtype)
    dense[rng.random((n, d)) > density] = 0
    X = sp.csr_matrix(dense)
    it = np.int64 if idx64 else np.int32
    X = sp.csr_matrix((X.data.astype(dtype), X.indices.astype(it), X.indptr.astype(it)),
                      shape=(n, d))
    if n_classes == 0:
        y = rng.standard_normal(n)
    else:
        y = rng.integers(0, n_classes, n)
        y[rng.permutation(n)[:n_classes]] = np.arange(n_classes)   # every class present
    return X, y


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.integers(0, len(SPARSE_FITS) - 1), dtype=st.sampled_from([np.float32, np.float64]),
       n=st.integers(3, 50), d=st.integers(1, 25), density=st.sampled_from([0.1, 0.4, 0.9]),
       batch_size=st.sampled_from([1, 4, 16]), idx64=st.booleans(),
       weighted=st.booleans(), seed=st.integers(0, 2 ** 16), blocked=st.booleans())
def test_sparse_epoch_twin_matches_numba_and_the_numpy_reference(
        served, case, dtype, n, d, density, batch_size, idx64, weighted, seed, blocked):
    """``blocked``: each epoch runs in several compiled calls (the Ctrl-C blocks
    of issue 16: the catch-up timestamps, the scale and the L1 amount carried
    between calls) on both paths."""
    loss, optimizer, extra = SPARSE_FITS[case]
    rng = np.random.default_rng(seed)
    target = LOSSES[loss].target
    n_classes = 0 if target == "regression" else (3 if target == "multiclass" else 2)
    X, y = _sparse_problem(rng, n, d, density, dtype, idx64, n_classes)
    sw = rng.uniform(0.2, 2.0, n) if weighted else None
    cls = optkern.LinearRegressor if n_classes == 0 else optkern.LinearClassifier

    def fit(backend="auto"):
        return cls(loss=loss, optimizer=optimizer, max_epochs=3, tol=None, random_state=5,
                   batch_size=batch_size, backend=backend, **extra).fit(
                       X, y, sample_weight=sw)

    from optkern import _lin_epochs   # where the sparse epoch reads its block size
    with pytest.MonkeyPatch.context() as mp:
        if blocked:
            # about two minibatches a call
            mp.setattr(_lin_epochs, "SPARSE_EPOCH_BLOCK_WORK", max(1, 2 * batch_size * X.nnz // n))
        twin, n_twin, _ = served("aot", fit)
        numba, n_twin_sync, _ = served("sync", fit)
    ref = fit("numpy")
    assert n_twin > 0 and n_twin_sync == 0      # each path was the one forced
    np.testing.assert_allclose(twin.coef_, numba.coef_, **_tol(dtype))
    np.testing.assert_allclose(twin.intercept_, numba.intercept_, **_tol(dtype))
    assert twin.n_iter_ == numba.n_iter_ == ref.n_iter_
    if dtype == np.float64:
        np.testing.assert_allclose(twin.coef_, ref.coef_, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(twin.intercept_, ref.intercept_, rtol=1e-7, atol=1e-9)
        return
    # float32 against the float32 reference, or, where the problem itself is
    # ill-conditioned in float32, no further from the float64 answer than the
    # float32 reference is.  Example: 3 rows, no nonzeros, one of each of 3
    # classes: the softmax intercept gradient is 0 exactly, but 3e-8 of
    # rounding in float32, which RMSprop's first step (g / (sqrt(0.01 g^2) +
    # 1e-8)) turns into 2.3 lr, with a sign set by the summation order.
    tol = dict(rtol=2e-3, atol=2e-4)
    for name in ("coef_", "intercept_"):
        got, want = getattr(twin, name), getattr(ref, name)
        if np.allclose(got, want, **tol):
            continue
        ref64 = cls(loss=loss, optimizer=optimizer, max_epochs=3, tol=None, random_state=5,
                    batch_size=batch_size, backend="numpy", **extra).fit(
                        X.astype(np.float64), y, sample_weight=sw)
        exact = getattr(ref64, name)
        bound = 2 * np.abs(want - exact) + tol["atol"] + tol["rtol"] * np.abs(exact)
        assert np.all(np.abs(got - exact) <= bound), (name, got, want, exact)


def test_sparse_epoch_twin_rejects_bad_arguments_before_writing():
    mod = _backend.cython_module("sparse_epochs")
    if mod is None:
        pytest.skip("the sparse Cython twin is not built")
    with pytest.raises(ValueError, match="kind"):
        mod.epoch_for("log", "adam", "dense")
    with pytest.raises(ValueError, match="scaled epoch runs"):
        mod.SparseEpoch("log", "adam", "scaled")
    with pytest.raises(ValueError, match="unknown loss"):
        mod.SparseEpoch("nope", "adam", "rows")
    # a fit's own arguments, captured, then broken one at a time
    rng = np.random.default_rng(0)
    X, y = _sparse_problem(rng, 30, 8, 0.4, np.float64, False, 2)
    captured = {}
    fn = mod.epoch_for("log", "adam", "rows")

    class Spy:
        def __call__(self, *args):
            captured["args"] = list(args)
            return fn(*args)
    from optkern import sparse_epochs
    orig = sparse_epochs.SparseRunner.use_twin

    def use_twin(self):
        ok = orig(self)
        self.twin = Spy()
        return ok
    old = _jit.set_mode("aot")
    try:
        sparse_epochs.SparseRunner.use_twin = use_twin
        optkern.LinearClassifier(optimizer="adam", max_epochs=1, tol=None, batch_size=4,
                                 random_state=0, alpha=1e-2).fit(X, y)
    finally:
        sparse_epochs.SparseRunner.use_twin = orig
        _jit.set_mode(old)
    args = captured["args"]
    W = args[9]
    before = W.copy()
    bad = {
        6: (-1, "start, stop"),                       # start
        7: (10 ** 6, "start, stop"),                  # stop past the order
        8: (0, "batch_size"),
        1: (args[1].astype(np.int64), "indptr"),      # indices int64, indptr int32
    }
    for pos, (value, match) in bad.items():
        broken = list(args)
        broken[pos] = value
        with pytest.raises((ValueError, TypeError), match=match):
            fn(*broken)
        np.testing.assert_array_equal(W, before)
    broken = list(args)
    broken[5] = args[5].copy()
    broken[5][0] = 10 ** 6                            # order indexes a row that is not there
    with pytest.raises(ValueError, match="order"):
        fn(*broken)
    with pytest.raises(TypeError, match="arguments"):
        fn(*args[:-1])
    np.testing.assert_array_equal(W, before)


# ------------------------------------------------------ the compile server


def _python(code, cache, mode="background", timeout=300):
    env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(cache, "numba"),
               OPTKERN_CACHE_DIR=os.path.join(cache, "generated"), OPTKERN_JIT=mode)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


_DENSE = """
import numpy as np, optkern
from optkern import _jit
rng = np.random.default_rng(0)
X = rng.standard_normal((40, 9)); W = rng.standard_normal((9, 3)); b = rng.standard_normal(3)
ref = X @ W + b
"""

# CSR: "auto" runs the compiled CSR predict kernel at any size (a small dense
# X goes to the Cython kernel or BLAS, and the finite scan of X runs in NumPy
# before Numba has started: neither would show the hand-over)
_PREDICT = """
import numpy as np, scipy.sparse as sp, optkern
from optkern import _jit
rng = np.random.default_rng(0)
X = sp.csr_matrix(rng.standard_normal((40, 9)))
W = rng.standard_normal((9, 3)); b = rng.standard_normal(3)
ref = X @ W + b
"""


def test_first_call_is_served_by_the_twin_then_numba_takes_over(tmp_path):
    out = _python(_PREDICT + """
s0 = _jit.stats()
a = optkern.predict_scores(X, W, b)
s1 = _jit.stats()
assert s1["twin"] > s0["twin"] and s1["pending"] >= 1, s1
assert _jit.wait(timeout=240)
c = optkern.predict_scores(X, W, b)
s2 = _jit.stats()
assert s2["numba"] > s1["numba"], s2
np.testing.assert_allclose(a, ref, rtol=1e-12)
np.testing.assert_allclose(c, ref, rtol=1e-12)
print("OK")
""", str(tmp_path))
    assert "OK" in out
    # the next process finds the kernel in the disk cache: Numba from its first call
    out = _python(_PREDICT + """
s0 = _jit.stats()
np.testing.assert_allclose(optkern.predict_scores(X, W, b), ref, rtol=1e-12)
assert _jit.stats()["numba"] > s0["numba"] and _jit.stats()["pending"] == 0, _jit.stats()
print("OK")
""", str(tmp_path))
    assert "OK" in out


_SERVER_REQUEST = """
import base64, json, pickle, sys
import numpy as np
from numba import typeof
from optkern.kernels import loss_drivers as drv
X = np.ones((5, 4)); W = np.ones((4, 3))
args = (X, W, None, np.empty((5, 3)), np.empty((3, 4)))
sig = tuple(typeof(a) for a in args)
fn = drv.predict_dense.py_func
print(json.dumps({"id": 1, "module": fn.__module__, "path": fn.__code__.co_filename,
                  "qualname": fn.__qualname__,
                  "sig": base64.b64encode(pickle.dumps(sig)).decode("ascii")}))
"""


def _server_env(cache):
    return dict(os.environ, NUMBA_CACHE_DIR=os.path.join(cache, "numba"),
                OPTKERN_CACHE_DIR=os.path.join(cache, "generated"), OPTKERN_JIT="sync")


def _start_server(cache, request):
    proc = subprocess.Popen([sys.executable, "-m", "optkern._jit"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_server_env(cache))
    proc.stdin.write(request)
    proc.stdin.flush()
    return proc


_USE_CACHED = _DENSE + """
from optkern.kernels import loss_drivers as drv
from numba import typeof
args = (X, W, b, np.empty((40, 3)), np.empty((3, 9)))
sig = tuple(typeof(a) for a in args)
loaded = _jit._load_cached(drv.predict_dense, sig)
drv.predict_dense(*args)           # compiles here if the entry was not there
np.testing.assert_allclose(args[3], ref, rtol=1e-12)
print("LOADED" if loaded else "MISS")
"""


@pytest.mark.parametrize("delay", [0.5, 1.5, 3.0])
def test_server_killed_mid_compile_leaves_a_usable_cache(tmp_path, delay):
    cache = str(tmp_path)
    request = _python(_SERVER_REQUEST, cache, mode="sync")
    # the request's signature has b=None; the checks below use the same call
    # with b given too: both must work whatever the kill left behind
    proc = _start_server(cache, request)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    out = _python(_USE_CACHED, cache, mode="sync")
    assert "LOADED" in out or "MISS" in out
    # a new server compiles it completely; a process then loads it from the cache
    proc = _start_server(cache, request)
    proc.stdin.close()
    reply = proc.stdout.read()
    assert proc.wait(timeout=300) == 0
    assert '"status": "ok"' in reply, reply + proc.stderr.read()
    out = _python(_USE_CACHED.replace("b, np.empty((40, 3))", "None, np.empty((40, 3))")
                  .replace("ref, rtol", "X @ W, rtol"), cache, mode="sync")
    assert "LOADED" in out


def test_two_servers_compiling_the_same_kernel_at_once(tmp_path):
    cache = str(tmp_path)
    request = _python(_SERVER_REQUEST, cache, mode="sync")
    procs = [_start_server(cache, request) for _ in range(2)]
    for proc in procs:
        proc.stdin.close()
    for proc in procs:
        reply = proc.stdout.read()
        assert proc.wait(timeout=300) == 0
        assert '"status": "ok"' in reply, reply + proc.stderr.read()
    out = _python(_USE_CACHED.replace("b, np.empty((40, 3))", "None, np.empty((40, 3))")
                  .replace("ref, rtol", "X @ W, rtol"), cache, mode="sync")
    assert "LOADED" in out
    leftovers = [f for _, _, files in os.walk(cache) for f in files if ".tmp." in f]
    assert not leftovers


# ------------------------------------------------ L-BFGS and BLAS's threads


def test_lbfgs_solves_with_blas_on_one_thread_and_restores_it():
    """scipy's L-BFGS-B steps are small BLAS/LAPACK calls: with OpenBLAS's
    threads on a busy machine (the compile server on the other core) each one
    waited for a descheduled thread (13 ms a call on digits).  The solve runs
    them on one thread, and the caller's setting comes back afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        counts = [p["num_threads"] for p in threadpoolctl.threadpool_info()
                  if p["user_api"] == "blas"]
        return max(counts) if counts else None
    before = blas_threads()
    if before is None:
        pytest.skip("no BLAS library that threadpoolctl can see")
    seen = []
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5))
    y = rng.integers(0, 3, 60)
    m = optkern.LinearClassifier(solver="lbfgs", max_epochs=20, tol=None,
                                 callbacks=[lambda row: seen.append(blas_threads())]).fit(X, y)
    assert seen and set(seen) == {1}
    assert blas_threads() == before
    ref = optkern.LinearClassifier(solver="lbfgs", max_epochs=20, tol=None,
                                   backend="numpy").fit(X, y)
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-6, atol=1e-8)


# ------------------------------------- compiles that still happen are said


def _fresh_kernel():
    import numba

    def add_one(x):            # a new function each call: never cached, always compiled
        return x + 1
    return numba.njit(add_one)


def test_compile_watch_announces_and_times_a_foreground_compile():
    import io as _io
    out = _io.StringIO()
    fn = _fresh_kernel()
    with _jit.CompileWatch(out) as watch:
        assert fn(1) == 2
        assert fn(2) == 3             # loaded: no second announcement
    text = out.getvalue()
    assert text.count("compiling kernels for") == 1
    assert "add_one" in text and "(first use; cached afterwards)" in text
    assert watch.seconds > 0 and watch.names == [watch.names[0]]
    fn(1.5)                           # a compile outside the block is not watched
    assert out.getvalue() == text
    quiet = _io.StringIO()
    with _jit.CompileWatch(quiet, announce=False) as w2:
        _fresh_kernel()(1)
    assert quiet.getvalue() == "" and w2.seconds > 0


def test_train_reports_compile_time_apart_from_training_time(tmp_path, capsys, monkeypatch):
    from optkern.cli import main

    class Compiling(_jit.CompileWatch):
        def __enter__(self):          # compiles inside the timed fit's window
            super().__enter__()
            # enough of them to pass the 0.05 s under which the command line
            # prints no note: one tiny compile takes 20-40 ms once Numba's
            # pipeline is warm (a quiet machine, an xdist worker that has
            # compiled before), > 0.05 s in a fresh process
            while self.seconds < 0.06:
                _fresh_kernel()(1)
            return self
    monkeypatch.setattr(_jit, "CompileWatch", Compiling)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 0).astype(int))
    rc = main(["train", str(tmp_path / "d.npz"), "--epochs", "2", "--backend", "numpy"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "optkern: compiling kernels for" in err
    first = [line for line in err.splitlines() if line.startswith("epoch    1")]
    assert first and "s compiling)" in first[0]
    trained = [line for line in out.splitlines() if line.startswith("trained:")][0]
    assert "s compiling kernels, first use)" in trained
    took = float(trained.split(" epochs in ")[1].split(" s")[0])
    spent = float(trained.split("(+ ")[1].split(" s")[0])
    assert took >= 0 and spent > 0


# ------------------------------------------- scans before Numba has started


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("limit", [1, 1 << 24])
def test_scans_give_the_same_answer_in_numpy_and_compiled(monkeypatch, warm, limit):
    """losses._int_range and _all_finite run in NumPy until Numba has started
    in the process (below _NUMPY_SCAN_MAX elements), else compiled: the same
    answers either way, NaN and both infinities found anywhere."""
    from optkern import losses
    monkeypatch.setattr(_jit, "numba_warm", lambda: warm)
    monkeypatch.setattr(losses, "_NUMPY_SCAN_MAX", limit)
    rng = np.random.default_rng(0)
    for dtype in (np.int32, np.int64):
        a = rng.integers(-50, 900, 1000).astype(dtype)
        lo, hi = losses._int_range(a)
        assert (int(lo), int(hi)) == (int(a.min()), int(a.max()))
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((37, 5)).astype(dtype)
        assert losses._all_finite(x)
        for bad in (np.nan, np.inf, -np.inf):
            for where in ((0, 0), (20, 3), (36, 4)):
                y = x.copy()
                y[where] = bad
                assert not losses._all_finite(y)
                assert not losses._all_finite(np.asfortranarray(y))


def test_a_cython_process_never_starts_numba_for_a_scan(tmp_path):
    """A process whose kernels are the Cython ones does not pay Numba's
    start-up (0.1-0.6 s) for the label and finite scans, even when their
    compiled forms are in the disk cache (a warm cache made the first cython
    fit 3.9x slower than on an empty one)."""
    _python("""
import numpy as np
from optkern import losses
losses._int_range(np.arange(7)); losses._int_range(np.arange(7, dtype=np.int32))
losses._all_finite(np.ones((3, 2))); losses._all_finite(np.ones((3, 2), np.float32))
""", str(tmp_path), mode="sync")
    out = _python("""
import numpy as np, optkern
from optkern import _jit, losses
from optkern.estimators import LinearClassifier
rng = np.random.default_rng(0)
X = rng.standard_normal((120, 6)).astype(np.float32); y = rng.integers(0, 3, 120)
m = LinearClassifier(optimizer="adam", max_epochs=2, tol=None, random_state=0,
                     backend="cython").fit(X, y)
W = np.zeros((6, 3), np.float32)
optkern.loss_and_grad(X, y, W, np.zeros(3, np.float32), loss="softmax", backend="cython")
assert losses._int_range(np.arange(7)) == (0, 6)
X[5, 2] = np.nan
try:
    optkern.loss_and_grad(X, y, W, np.zeros(3, np.float32), loss="softmax", backend="cython")
except ValueError as e:
    assert "X" in str(e)
else:
    raise AssertionError("no error")
assert not _jit.numba_warm()
assert m.score(X[:5], y[:5]) >= 0
print("OK")
""", str(tmp_path))
    assert "OK" in out
