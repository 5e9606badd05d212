"""Minibatch loss and gradient: every backend agrees with the NumPy reference.

Every loss x penalty x backend x dtype x (dense C, dense F, CSR); hypothesis
over shapes (n_samples = 1 and n_outputs = 1 included); extreme scores of
+-1e4; check_grad for every loss and penalty; sample_weight = 2 equals
duplicated rows; parallel results are reproducible.  The "cuda" backend has
its own file (test_losses_cuda.py, simulator, tiny sizes).
"""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

import optkern
from optkern import _backend
from optkern.kernels import loss_reference as ref
from optkern.losses import LOSSES, check_grad, loss_and_grad, predict_scores

LOSS_NAMES = sorted(LOSSES)
PENALTIES = ["l2", "l1", "elasticnet", None]
LAYOUTS = ["C", "F", "csr"]
DTYPES = [np.float64, np.float32]


def cpu_backends():
    out = ["numba", "numba-parallel"]
    if _backend.cython_module("losses") is not None:
        out.append("cython")
    return out + ["auto"]


BACKENDS = cpu_backends()


def n_outputs_for(loss, k):
    return 1 if LOSSES[loss].target == "binary" else k


def make_problem(loss, n, d, k, dtype, layout="C", seed=0, density=0.5, scale=1.0,
                 intercept=True, weights=True):
    rng = np.random.default_rng(seed)
    k = n_outputs_for(loss, k)
    X = rng.standard_normal((n, d))
    if layout == "csr":
        X = X * (rng.random((n, d)) < density)
        X = sp.csr_matrix(X.astype(dtype))
    else:
        X = X.astype(dtype)
        if layout == "F":
            X = np.asfortranarray(X)
    W = (rng.standard_normal((d, k)) * scale).astype(dtype)
    b = rng.standard_normal(k).astype(dtype) if intercept else None
    target = LOSSES[loss].target
    if target == "regression":
        y = rng.standard_normal((n, k)) if k > 1 else rng.standard_normal(n)
    elif target == "binary":
        y = rng.integers(0, 2, n)
    else:
        y = rng.integers(0, k, n)
    sw = rng.uniform(0.1, 2.0, n) if weights else None
    return X, y, W, b, sw


def tol(dtype):
    return 1e-10 if dtype == np.float64 else 2e-4


def assert_agree(got, want, dtype, what):
    t = tol(dtype)
    lg, dWg, dbg = got
    lw, dWw, dbw = want
    assert lg == pytest.approx(lw, rel=t, abs=t), (what, lg, lw)
    scale = max(1.0, float(np.max(np.abs(dWw))))
    np.testing.assert_allclose(dWg, dWw, rtol=t, atol=t * scale, err_msg=f"dW {what}")
    if dbw is None:
        assert dbg is None
    else:
        np.testing.assert_allclose(dbg, dbw, rtol=t, atol=t * max(1.0, np.abs(dbw).max()),
                                   err_msg=f"db {what}")
    assert dWg.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_backends_agree_with_reference(loss, backend, layout, dtype):
    X, y, W, b, sw = make_problem(loss, 23, 9, 3, dtype, layout, seed=hash(loss) % 1000)
    for penalty in PENALTIES:
        kw = dict(loss=loss, alpha=0.05, penalty=penalty, l1_ratio=0.3, sample_weight=sw)
        want = loss_and_grad(X, y, W, b, backend="numpy", **kw)
        got = loss_and_grad(X, y, W, b, backend=backend, **kw)
        assert_agree(got, want, dtype, f"{loss} {backend} {layout} {penalty}")


@pytest.mark.parametrize("method", ["fused", "blas"])
@pytest.mark.parametrize("backend", ["numba", "numba-parallel", "cython"])
def test_both_dense_methods_agree(backend, method):
    if backend == "cython" and _backend.cython_module("losses") is None:
        pytest.skip("Cython extension not built")
    for loss in LOSS_NAMES:
        for dtype in DTYPES:
            X, y, W, b, sw = make_problem(loss, 17, 6, 4, dtype)
            kw = dict(loss=loss, alpha=0.01, sample_weight=sw)
            want = loss_and_grad(X, y, W, b, backend="numpy", **kw)
            got = loss_and_grad(X, y, W, b, backend=backend, method=method, **kw)
            assert_agree(got, want, dtype, f"{loss} {backend} {method}")


@pytest.mark.parametrize("k", [16, 40])
@pytest.mark.parametrize("backend", BACKENDS)
def test_blas_path_with_many_outputs_agrees(backend, k):
    # from VEC_MIN_OUTPUTS outputs the BLAS path's row pass runs the rules'
    # vector form (rows_checked, a separate derivative row): the same results
    # as the reference, with and without intercept, weights and checks
    for loss in LOSS_NAMES:
        for dtype in DTYPES:
            for intercept, weights in ((True, True), (False, False)):
                X, y, W, b, sw = make_problem(loss, 29, 7, k, dtype, intercept=intercept,
                                              weights=weights, seed=k)
                kw = dict(loss=loss, alpha=0.01, sample_weight=sw)
                want = loss_and_grad(X, y, W, b, backend="numpy", **kw)
                for check in (True, False):
                    got = loss_and_grad(X, y, W, b, backend=backend, method="blas",
                                        check_input=check, **kw)
                    assert_agree(got, want, dtype, f"{loss} {backend} k={k} {check}")


@settings(deadline=None, max_examples=40)
@given(k=st.integers(16, 300), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 10_000),
       special=st.sampled_from([None, np.nan, np.inf, -np.inf, 0.0, -0.0, 80.0, -1e4]),
       where=st.sampled_from(["first", "label", "last", "everywhere"]))
def test_softmax_vector_form_agrees_with_row_form(k, dtype, seed, special, where):
    # the vector form (k >= VEC_MIN_OUTPUTS) takes its row maximum with
    # _helpers.max_fast (llvm.maxnum, which skips NaN), the row form with
    # Python's max: the same loss and derivatives, NaN where the row form has
    # NaN, on rows with NaN, infinities, signed zeros, ties and huge scores
    from optkern.kernels import loss_drivers as drv
    mod = drv.module_for("softmax")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(k).astype(dtype) * dtype(3)
    y = int(rng.integers(0, k))
    if special is not None:
        at = {"first": [0], "label": [y], "last": [k - 1], "everywhere": list(range(k))}[where]
        z[at] = special
    dz_row, dz_vec = np.empty_like(z), np.empty_like(z)
    eps = dtype(0)
    loss_row = mod._rule(z.copy(), y, eps, dz_row)
    loss_vec = mod._rule_vec(z.copy(), y, eps, dz_vec)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_array_equal(np.isnan(dz_vec), np.isnan(dz_row))
    np.testing.assert_allclose(dz_vec, dz_row, rtol=tol, atol=tol)
    assert np.isnan(loss_vec) == np.isnan(loss_row)
    if not np.isnan(loss_row):
        np.testing.assert_allclose(loss_vec, loss_row, rtol=tol, atol=tol)


@settings(deadline=None, max_examples=25)
@given(loss=st.sampled_from(LOSS_NAMES), backend=st.sampled_from(BACKENDS),
       dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
       n=st.integers(1, 12), d=st.integers(1, 7), k=st.integers(1, 4),
       seed=st.integers(0, 10_000), penalty=st.sampled_from(PENALTIES))
def test_hypothesis_shapes(loss, backend, dtype, layout, n, d, k, seed, penalty):
    # b and sample_weight are always given here: every None-combination is a
    # separate compiled signature, and those are covered by dedicated tests
    X, y, W, b, sw = make_problem(loss, n, d, k, dtype, layout, seed=seed)
    kw = dict(loss=loss, alpha=0.1, penalty=penalty, sample_weight=sw)
    want = loss_and_grad(X, y, W, b, backend="numpy", **kw)
    got = loss_and_grad(X, y, W, b, backend=backend, **kw)
    assert_agree(got, want, dtype, f"{loss} {backend} {layout} n={n} d={d} k={k}")


@pytest.mark.parametrize("n,k", [(1, 1), (1, 3), (5, 1)])
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_single_sample_and_single_output(loss, n, k):
    for backend in BACKENDS:
        X, y, W, b, sw = make_problem(loss, n, 4, k, np.float64)
        want = loss_and_grad(X, y, W, b, loss=loss, sample_weight=sw, backend="numpy")
        got = loss_and_grad(X, y, W, b, loss=loss, sample_weight=sw, backend=backend)
        assert_agree(got, want, np.float64, f"{loss} {backend} n={n} k={k}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("loss", ["softmax", "log", "multiclass_hinge", "modified_huber",
                                  "squared_hinge"])
def test_extreme_scores_stay_finite(loss, dtype):
    """Scores of +-1e4: a naive softmax overflows exp, a naive log loss log(0)."""
    k = n_outputs_for(loss, 3)
    n, d = 6, 2
    X = np.array([[1, 0], [0, 1], [1, 1], [-1, 0], [0, -1], [-1, -1]], dtype)
    W = np.full((d, k), 1e4, dtype)
    W[:, 0] = -1e4
    b = np.zeros(k, dtype)
    y = np.array([0, 1, 0, 1, 0, 1]) if k > 1 or LOSSES[loss].target == "binary" \
        else np.zeros(n)
    want = ref.loss_and_grad(X, ref_y(loss, y, n, k, dtype), W, b, loss)
    assert np.isfinite(want[0])
    for backend in ["numpy"] + BACKENDS:
        got = loss_and_grad(X, y, W, b, loss=loss, backend=backend, sample_weight=np.ones(n))
        assert np.isfinite(got[0]) and np.all(np.isfinite(got[1])), backend
        assert_agree(got, want, dtype, f"{loss} {backend} extreme")


def ref_y(loss, y, n, k, dtype):
    target = LOSSES[loss].target
    if target == "multiclass":
        return np.asarray(y, np.int64)
    return np.asarray(y, dtype).reshape(n, 1)


def test_softmax_extreme_value_is_exact():
    X = np.array([[1.0]], np.float32)
    W = np.array([[1e4, -1e4]], np.float32)
    for backend in ["numpy"] + BACKENDS:
        loss, dW, db = loss_and_grad(X, [1], W, None, backend=backend)
        assert loss == pytest.approx(2e4, rel=1e-6)
        np.testing.assert_allclose(dW, [[1.0, -1.0]], atol=1e-6)


@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_check_grad(loss, penalty):
    X, y, W, b, sw = make_problem(loss, 8, 4, 3, np.float64, seed=3)
    kw = dict(loss=loss, alpha=0.1, penalty=penalty, l1_ratio=0.4, sample_weight=sw)
    assert check_grad(X, y, W, b, **kw) < 1e-5
    assert check_grad(X, y, W, b, backend="numba", **kw) < 1e-5


def test_check_grad_detects_a_wrong_gradient(monkeypatch):
    X, y, W, b, _ = make_problem("softmax", 8, 4, 3, np.float64)
    orig = ref.loss_and_grad

    def broken(*a, **k):
        v, dW, db = orig(*a, **k)
        return v, dW * 1.01, db
    good = check_grad(X, y, W, b)
    assert good < 1e-6
    import optkern.kernels.loss_reference as mod
    monkeypatch.setattr(mod, "loss_and_grad", broken)
    # the analytic gradient (numpy backend) is now 1% off, the objective is not
    assert check_grad(X, y, W, b) > 5e-3


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_weight_two_equals_duplicated_rows(loss, layout):
    X, y, W, b, _ = make_problem(loss, 10, 5, 3, np.float64, layout)
    y = np.asarray(y)
    sw = np.ones(10)
    sw[[1, 4, 7]] = 2.0
    rows = np.concatenate([np.arange(10), [1, 4, 7]])
    Xd = X[rows]
    for backend in ["numpy"] + BACKENDS:
        got = loss_and_grad(X, y, W, b, loss=loss, sample_weight=sw, alpha=0.01,
                            backend=backend)
        want = loss_and_grad(Xd, y[rows], W, b, loss=loss, alpha=0.01, backend=backend,
                             sample_weight=np.ones(13))
        assert_agree(got, want, np.float64, f"{loss} {backend}")


def test_zero_weights_give_penalty_only():
    X, y, W, b, _ = make_problem("softmax", 5, 3, 2, np.float64)
    for backend in ["numpy"] + BACKENDS:
        loss, dW, db = loss_and_grad(X, y, W, b, alpha=0.5, sample_weight=np.zeros(5),
                                     backend=backend)
        assert loss == pytest.approx(0.25 * np.sum(W * W))
        np.testing.assert_allclose(dW, 0.5 * W)
        np.testing.assert_allclose(db, 0)


@pytest.mark.parametrize("kernel", ["penalty_set", "penalty_add"])
@pytest.mark.parametrize("l1_ratio", [0.0, 0.15])
@pytest.mark.parametrize("size", [21, 100, 1100])
@pytest.mark.parametrize("dtype", DTYPES)
def test_penalty_bits_do_not_depend_on_where_the_arrays_lie(dtype, size, l1_ratio, kernel):
    """The penalty's value and gradient are the same bits wherever dW lies
    relative to W.  With the stores and the reassociated sums in one loop,
    LLVM's run-time overlap check sent a dW placed a few vectors after W to
    the scalar loop, whose sums come in another order: the loss differed in
    its last bits between two calls on equal arrays (a flaky bit-for-bit
    test in tests/test_losses_csr_k1.py showed it)."""
    from optkern.kernels import loss_drivers as drv
    fn = getattr(drv, kernel)
    rng = np.random.default_rng(size)
    W0 = rng.standard_normal(size).astype(dtype)
    G0 = rng.standard_normal(size).astype(dtype)
    w_at = size + 64
    buf = np.zeros(w_at + 3 * size + 512, dtype)
    results = set()
    # dW before W, right after it at every offset of a vector width x
    # interleave window, far after
    for d_at in [0, *range(w_at + size, w_at + size + 70), w_at + 2 * size + 300]:
        buf[:] = 0
        W = buf[w_at:w_at + size].reshape(size, 1)
        dW = buf[d_at:d_at + size].reshape(size, 1)
        W[:, 0] = W0
        dW[:, 0] = G0
        v = fn(W, dW, 0.05, l1_ratio)
        results.add((v, dW.tobytes()))
    assert len(results) == 1


@pytest.mark.parametrize("backend", ["numba-parallel", "cython"])
def test_parallel_is_reproducible(backend):
    if backend == "cython" and _backend.cython_module("losses") is None:
        pytest.skip("Cython extension not built")
    X, y, W, b, sw = make_problem("softmax", 301, 40, 5, np.float32, seed=5)
    first = loss_and_grad(X, y, W, b, sample_weight=sw, backend=backend)
    for _ in range(3):
        again = loss_and_grad(X, y, W, b, sample_weight=sw, backend=backend)
        assert again[0] == first[0]
        np.testing.assert_array_equal(again[1], first[1])
        np.testing.assert_array_equal(again[2], first[2])


def test_one_chunk_parallel_equals_serial():
    from optkern.kernels import loss_drivers as drv
    X, y, W, b, sw = make_problem("softmax", 50, 7, 3, np.float32, seed=2)
    mod = drv.module_for("softmax")
    yk = np.asarray(y, np.int64)
    sw = sw.astype(np.float32)
    out = []
    for fn, extra in ((mod.dense_serial, ()), (mod.dense_parallel, (1,))):
        dW = np.empty_like(W)
        db = np.empty_like(b)
        scratch = np.empty(drv.scratch_size(1, 7, 3), np.float32)
        v = fn(X, yk, sw, W, b, 0.1, 0.0, np.float32(0.1), dW, db, scratch, *extra)
        out.append((v, dW, db))
    assert out[0][0] == out[1][0]
    np.testing.assert_array_equal(out[0][1], out[1][1])


@pytest.mark.parametrize("k", [3, 20])      # the lane form (k < 16) and the row form
@pytest.mark.parametrize("alpha, l1_ratio", [(0.1, 0.0), (0.1, 0.5), (0.0, 0.0)])
def test_one_chunk_csr_parallel_equals_serial(k, alpha, l1_ratio):
    """csr_parallel's chunk 0 adds its rows into dW after the penalty, as
    csr_serial does: with one chunk dW and db are the same bits (the loss
    passes through the chunk's float32 slot, so it agrees to float32
    rounding); with two, the same up to the order of the sums."""
    import scipy.sparse as sp
    from optkern.kernels import loss_drivers as drv
    rng = np.random.default_rng(4)
    X = sp.random(60, 9, density=0.3, format="csr", dtype=np.float32, random_state=4)
    X.data[:] = rng.standard_normal(X.nnz)
    W = rng.standard_normal((9, k)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    y = rng.integers(0, k, 60).astype(np.int64)
    sw = rng.uniform(0.5, 2.0, 60).astype(np.float32)
    mod = drv.module_for("softmax")
    args = (X.data, X.indices, X.indptr, y, sw, W, b, alpha, l1_ratio, 0.1)
    out = []
    for fn, extra, chunks in ((mod.csr_serial, (), 1), (mod.csr_parallel, (1,), 1),
                              (mod.csr_parallel, (2,), 2)):
        dW = np.full_like(W, np.nan)
        db = np.full_like(b, np.nan)
        scratch = np.empty(drv.scratch_size(chunks, 9, k), np.float32)
        v = fn(*args, dW, db, scratch, *extra)
        out.append((v, dW, db))
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-6)
    np.testing.assert_array_equal(out[1][1], out[0][1])
    np.testing.assert_array_equal(out[1][2], out[0][2])
    assert out[2][0] == pytest.approx(out[0][0], rel=1e-6)
    np.testing.assert_allclose(out[2][1], out[0][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[2][2], out[0][2], rtol=1e-5, atol=1e-6)


def test_out_buffers_are_written_and_returned():
    X, y, W, b, sw = make_problem("softmax", 9, 4, 3, np.float32)
    dW = np.empty_like(W)
    db = np.empty_like(b)
    for backend in ["numpy"] + BACKENDS:
        loss, dW2, db2 = loss_and_grad(X, y, W, b, backend=backend, out=(dW, db))
        assert dW2 is dW and db2 is db
        want = loss_and_grad(X, y, W, b, backend="numpy")
        assert_agree((loss, dW, db), want, np.float32, backend)


def test_no_intercept():
    X, y, W, _, sw = make_problem("squared", 9, 4, 2, np.float64)
    for backend in ["numpy"] + BACKENDS:
        loss, dW, db = loss_and_grad(X, y, W, None, loss="squared", backend=backend)
        assert db is None
        Z = X @ W
        assert loss == pytest.approx(0.5 * np.sum((Z - y) ** 2) / 9)


def test_known_values():
    """Small hand-checked values of the formulas (scikit-learn's definitions)."""
    X = np.eye(2)
    W = np.array([[0.5], [-2.0]])
    y01 = np.array([1, 1])
    b = np.zeros(1)
    cases = {
        "log": np.mean(np.log1p(np.exp([-0.5, 2.0]))),
        "hinge": np.mean([0.5, 3.0]),
        "squared_hinge": np.mean([0.25, 9.0]),
        "modified_huber": np.mean([0.25, 8.0]),
    }
    for loss, want in cases.items():
        assert loss_and_grad(X, y01, W, b, loss=loss)[0] == pytest.approx(want)
    yr = np.array([0.0, 0.0])
    assert loss_and_grad(X, yr, W, b, loss="huber", epsilon=1.0)[0] == \
        pytest.approx(np.mean([0.125, 2.0 - 0.5]))
    assert loss_and_grad(X, yr, W, b, loss="epsilon_insensitive", epsilon=1.0)[0] == \
        pytest.approx(np.mean([0.0, 1.0]))
    assert loss_and_grad(X, yr, W, b, loss="absolute")[0] == pytest.approx(1.25)
    W3 = np.array([[1.0, 0.5, 0.2], [0.0, 3.0, 0.0]])
    assert loss_and_grad(X, [0, 0], W3, None, loss="multiclass_hinge")[0] == \
        pytest.approx(np.mean([0.5, 4.0]))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_predict_scores(layout):
    for dtype in DTYPES:
        X, y, W, b, _ = make_problem("softmax", 11, 6, 4, dtype, layout)
        want = np.asarray(X @ W) + b
        for backend in ["numpy", "cuda"] + BACKENDS:
            got = predict_scores(X, W, b, backend=backend)
            np.testing.assert_allclose(got, want, rtol=tol(dtype), atol=tol(dtype) * 10)
            assert got.dtype == dtype
        got = predict_scores(X, W, None)
        np.testing.assert_allclose(got, np.asarray(X @ W), rtol=tol(dtype),
                                   atol=tol(dtype) * 10)


def test_other_sparse_formats_are_converted_with_a_warning():
    X, y, W, b, _ = make_problem("softmax", 9, 5, 3, np.float64, "csr")
    want = loss_and_grad(X, y, W, b)
    with pytest.warns(sp.SparseEfficiencyWarning, match="tocsr"):
        got = loss_and_grad(X.tocoo(), y, W, b)
    assert_agree(got, want, np.float64, "coo")


def test_exported_from_package():
    assert optkern.loss_and_grad is loss_and_grad
    assert set(optkern.LOSSES) == {
        "squared", "huber", "epsilon_insensitive", "absolute", "log", "hinge",
        "squared_hinge", "modified_huber", "softmax", "multiclass_hinge"}


def test_loss_building_blocks_exported_from_kernels():
    from optkern import kernels
    from optkern.kernels import loss_drivers as drv
    from optkern.kernels.loss_rules import LOSS_RULES
    assert kernels.LOSS_RULES is LOSS_RULES
    assert kernels.loss_kernel is drv.kernel
    for name in ("loss_scratch_size", "loss_penalty_add", "predict_dense",
                 "predict_dense_parallel", "predict_csr", "predict_csr_parallel"):
        assert name in kernels.__all__ and name in dir(kernels)
        assert callable(getattr(kernels, name))
    with pytest.raises(AttributeError):
        kernels.no_such_kernel


def test_njit_building_block_callable_from_user_code():
    from numba import njit
    from optkern import kernels
    kern = kernels.loss_kernel("softmax", "dense")

    @njit
    def two_steps(X, y, W, b, dW, db, scratch):
        total = 0.0
        for _ in range(2):
            total += kern(X, y, None, W, b, 0.0, 0.0, 0.1, dW, db, scratch)
            for f in range(W.shape[0]):
                for j in range(W.shape[1]):
                    W[f, j] -= 0.1 * dW[f, j]
        return total

    X, y, W, b, _ = make_problem("softmax", 20, 5, 3, np.float64)
    W0 = W.copy()
    scratch = np.empty(kernels.loss_scratch_size(1, 5, 3))
    total = two_steps(X, np.asarray(y, np.int64), W, b, np.empty_like(W), np.empty_like(b),
                      scratch)
    l1, g1, _ = loss_and_grad(X, y, W0, b)
    l2, _, _ = loss_and_grad(X, y, W0 - 0.1 * g1, b)
    assert total == pytest.approx(l1 + l2)


def test_auto_csr_goes_parallel_only_with_enough_nonzeros_per_feature(monkeypatch):
    """backend="auto" on CSR: the parallel kernel's per-thread (d, k) partial
    gradients must be small next to the rows' work (losses.CSR_PARALLEL_...).
    On a quiet 2-core machine (a busy one stays serial: tests/test_auto_rule.py)."""
    import os
    from optkern import _backend, losses
    monkeypatch.setattr(_backend, "_CORES", 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    many = sp.random(4096, 784, density=0.05, format="csr", random_state=0)   # ~200 per feature
    few = sp.random(256, 4096, density=0.01, format="csr", random_state=0)    # ~2.6 per feature
    # both above LOSS_PARALLEL_MIN_SIZE (2 x nonzeros x k multiply-adds)
    for X, k in ((many, 10), (few, 100)):
        assert 2 * X.nnz * k >= _backend.LOSS_PARALLEL_MIN_SIZE
    assert losses._resolve_backend("auto", "csr", many, 10) == "numba-parallel"
    assert losses._resolve_backend("auto", "csr", few, 100) == "numba"
    # the same work dense goes parallel: the rule is about the CSR partials
    assert losses._resolve_backend("auto", "dense", np.empty((256, 4096)), 100) == \
        "numba-parallel"


@settings(max_examples=40, deadline=None)
@given(r_n=st.integers(1, 6), d=st.integers(1, 70), k=st.integers(1, 15),
       dtype=st.sampled_from([np.float32, np.float64]), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_score_tiles_both_forms_match_numpy(r_n, d, k, dtype, bias, seed):
    """The fused dense kernel's two score tiles -- 6 rows x 2 outputs, and 4 x 5
    for targets with AVX-512 (_scores_block_wide, which _scores_tiles takes
    there) -- each give X W + b for every block size, feature count and output
    count (the tails of both loops), whichever one this machine runs; and so
    does the row-major update of dW^T both use."""
    from optkern.kernels import loss_drivers as drv
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((r_n + 3, d)).astype(dtype)
    WT = rng.standard_normal((k, d)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype) if bias else None
    want = X[2:2 + r_n].astype(np.float64) @ WT.T.astype(np.float64)
    if bias:
        want += b
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(d)) if dtype == np.float32 else \
        dict(rtol=1e-12, atol=1e-12 * np.sqrt(d))
    wide_rows = min(r_n, drv.WIDE_ROWS)
    for block, rows in ((drv._scores_block, r_n), (drv._scores_block_wide, wide_rows)):
        Zb = np.full((rows, k), np.nan, dtype)
        block(X, 2, rows, WT, b, Zb)
        np.testing.assert_allclose(Zb, want[:rows], **tol)
    Zr = np.full((r_n, k), np.nan, dtype)
    drv._scores_tiles(X, 2, r_n, WT, b, Zr)
    np.testing.assert_allclose(Zr, want, **tol)
    D = rng.standard_normal((r_n, k)).astype(dtype)
    accT = rng.standard_normal((k, d)).astype(dtype)
    want_acc = accT.astype(np.float64) + D.T.astype(np.float64) @ X[2:2 + r_n]
    drv._accumulate_tiles(X, 2, r_n, D, accT)
    np.testing.assert_allclose(accT, want_acc, **tol)
